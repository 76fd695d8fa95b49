"""Checkpoints that let a preempted or killed pod resume exactly where the run was.

A checkpoint is a directory `checkpoints/step-NNNNNNNN/` under the run's output: the trainable weights, the
optimizer, scheduler, RNG states, the data position (the step), the early-stopping state and the metrics so
far, then a `COMPLETE` marker written last, so a half-uploaded checkpoint is never resumed from. Uploads run
in a background thread while training continues; only the newest `keep` complete checkpoints stay.
"""
import re
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from kubetune.api import contract
from kubetune.trainer.storage import Store, join

MARKER = "COMPLETE"
_STEP = re.compile(r"/step-(\d{8})/")


class Checkpointer:
    def __init__(self, store: Store, run_uri: str, keep: int, scratch: Path, telemetry=None):
        self.store = store
        self.telemetry = telemetry  # upload duration, last success and failures (the checkpoint alerts read them)
        self.root = join(run_uri, contract.CHECKPOINTS_DIR)
        self.keep = keep
        self.scratch = scratch
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
        self.pending: Future | None = None

    def save(self, step: int, state: dict, background: bool = True) -> float:
        """Writes the state locally, then uploads it (in the background unless told otherwise).
        Returns the seconds training was blocked."""
        started = time.monotonic()
        self.wait()
        local = Path(tempfile.mkdtemp(prefix=f"step-{step}-", dir=self.scratch))
        torch.save(state, local / "state.pt")
        self.pending = self.pool.submit(self._upload, step, local)
        if not background:
            self.wait()
        return time.monotonic() - started

    def _upload(self, step: int, local: Path) -> None:
        started = time.monotonic()
        target = join(self.root, f"step-{step:08d}")
        try:
            self.store.put_file(local / "state.pt", join(target, "state.pt"))
            self.store.put_text(str(step), join(target, MARKER))
        except BaseException as exc:
            if self.telemetry:
                self.telemetry.checkpoint_upload_failed(step, exc)
            raise
        if self.telemetry:
            self.telemetry.checkpoint_uploaded(step, time.monotonic() - started)
        shutil.rmtree(local, ignore_errors=True)
        for old in self.complete_steps()[: -self.keep]:
            self.store.delete_prefix(join(self.root, f"step-{old:08d}"))

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()  # re-raises an upload failure here, in the training thread
            self.pending = None

    def complete_steps(self) -> list[int]:
        objects = self.store.list(join(self.root, ""))
        return sorted(int(m.group(1)) for o in objects if o.endswith("/" + MARKER) and (m := _STEP.search(o)))

    def latest(self) -> dict | None:
        """The newest complete checkpoint's state, or None when the run starts fresh."""
        steps = self.complete_steps()
        if not steps:
            return None
        path = self.store.fetch(join(self.root, f"step-{steps[-1]:08d}", "state.pt"), "checkpoint")
        return torch.load(path, map_location="cpu", weights_only=False)
