"""Checkpoints that let a preempted or killed pod resume exactly where the run was.

A checkpoint is a directory `checkpoints/step-NNNNNNNN/` under the run's output: `state.pt` (the trainable weights,
the optimizer, scheduler, RNG states of every rank, the data position (the step), the early-stopping state and the
metrics so far), then a `COMPLETE` marker written last, so a half-uploaded checkpoint is never resumed from.
Uploads run in a background thread while training continues; only the newest `keep` complete checkpoints stay.

Replicated training (one process, DDP) checkpoints from rank 0 alone. Sharded training (FSDP) writes the tensors
with torch.distributed.checkpoint under `shards/` (async where torch can: staged to host memory, written and
uploaded in the background): every rank writes and uploads its own shard files, rank 0 the `.metadata` and
`state.pt` (everything but the tensors). The `COMPLETE` marker then needs every rank's upload: rank 0 writes it
after a barrier in `wait()`, which runs before the next checkpoint, on SIGTERM and at the end of the run.
"""
import re
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from kubetune.api import contract
from kubetune.trainer.dist import Dist
from kubetune.trainer.storage import Store, join

MARKER = "COMPLETE"
SHARDS = "shards"
_STEP = re.compile(r"/step-(\d{8})/")


class Checkpointer:
    def __init__(self, store: Store, run_uri: str, keep: int, scratch: Path, telemetry=None, dist: Dist | None = None):
        self.store = store
        self.telemetry = telemetry  # upload duration, last success and failures (the checkpoint alerts read them)
        self.root = join(run_uri, contract.CHECKPOINTS_DIR)
        self.keep = keep
        self.scratch = scratch
        self.dist = dist or Dist()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
        self.pending: Future | None = None
        self.unmarked: int | None = None  # a sharded checkpoint uploaded by this rank, not yet marked COMPLETE

    def _dir(self, step: int) -> str:
        return join(self.root, f"step-{step:08d}")

    def save(self, step: int, state: dict, background: bool = True) -> float:
        """Replicated state (rank 0 only): writes it locally, then uploads it (in the background unless told
        otherwise). Returns the seconds training was blocked."""
        started = time.monotonic()
        self.wait()
        local = Path(tempfile.mkdtemp(prefix=f"step-{step}-", dir=self.scratch))
        torch.save(state, local / "state.pt")
        self.pending = self.pool.submit(self._upload, step, local, None, True)
        if not background:
            self.wait()
        return time.monotonic() - started

    def save_sharded(self, step: int, meta: dict | None, tensors: dict, background: bool = True) -> float:
        """Sharded state (every rank calls it): `tensors` (DTensors) through torch.distributed.checkpoint, `meta`
        (rank 0's, None elsewhere) as state.pt."""
        import torch.distributed.checkpoint as dcp

        started = time.monotonic()
        self.wait()
        local = Path(tempfile.mkdtemp(prefix=f"step-{step}-", dir=self.scratch))
        if meta is not None:
            torch.save(meta, local / "state.pt")
        if background and self.dist.checkpoint_group is not None:
            written = dcp.async_save(tensors, checkpoint_id=str(local / SHARDS),
                                     process_group=self.dist.checkpoint_group)
        else:
            dcp.save(tensors, checkpoint_id=str(local / SHARDS))
            written = None
        self.pending = self.pool.submit(self._upload, step, local, written, False)
        self.unmarked = step
        if not background:
            self.wait()
        return time.monotonic() - started

    def _upload(self, step: int, local: Path, written, mark: bool) -> None:
        started = time.monotonic()
        target = self._dir(step)
        try:
            if written is not None:
                written.result()  # the async DCP write of this rank's shards
            self.store.put_dir(local, target)  # this rank's files only: each rank has a scratch dir of its own
            if mark:
                self.store.put_text(str(step), join(target, MARKER))
        except BaseException as exc:
            if self.telemetry:
                self.telemetry.checkpoint_upload_failed(step, exc)
            raise
        if self.telemetry:
            self.telemetry.checkpoint_uploaded(step, time.monotonic() - started)
        shutil.rmtree(local, ignore_errors=True)
        if mark:
            self.prune()

    def prune(self) -> None:
        for old in self.complete_steps()[: -self.keep]:
            self.store.delete_prefix(self._dir(old))

    def wait(self) -> None:
        """Waits for this rank's upload (re-raising its failure here, in the training thread); for a sharded
        checkpoint, every rank waits for all, and rank 0 marks it complete."""
        if self.pending is not None:
            self.pending.result()
            self.pending = None
        if self.unmarked is not None:
            self.dist.barrier()
            if self.dist.main:
                self.store.put_text(str(self.unmarked), join(self._dir(self.unmarked), MARKER))
                self.prune()
            self.unmarked = None

    def complete_steps(self) -> list[int]:
        objects = self.store.list(join(self.root, ""))
        return sorted(int(m.group(1)) for o in objects if o.endswith("/" + MARKER) and (m := _STEP.search(o)))

    def newest(self) -> int | None:
        """The newest complete checkpoint, as rank 0 sees it (every rank gets the same answer)."""
        steps = self.complete_steps() if self.dist.main else None
        steps = self.dist.broadcast(steps)
        return steps[-1] if steps else None

    def latest(self) -> dict | None:
        """The newest complete checkpoint's state, or None when the run starts fresh. A sharded one comes back
        as its state.pt with `shards`, the local directory to load the tensors from."""
        step = self.newest()
        if step is None:
            return None
        local = self.dist.local_first(lambda: self.store.fetch(join(self._dir(step), ""), "checkpoint"))
        state = torch.load(local / "state.pt", map_location="cpu", weights_only=False)
        if (local / SHARDS).is_dir():
            state["shards"] = local / SHARDS
        return state
