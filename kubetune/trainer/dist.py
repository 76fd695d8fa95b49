"""Rank discipline in one place: who writes, who downloads, who waits, and what every rank must agree on.

- Rank 0 writes: checkpoints (replicated ones), artifacts, summary.json, pruning. With sharded (FSDP)
  checkpoints every rank writes its own shard files and rank 0 the rest (checkpoint.py).
- Each node's local rank 0 downloads the base model and the data; the other ranks of the node wait at a barrier
  and then find them in the shared cache.
- Rank 0 tokenizes the data (and shares it under the run's prefix) while the other ranks wait; then they read
  its result: one tokenize per job, not one per node at the same moment.
- Decisions that change the collective schedule (stop on SIGTERM, a time-based checkpoint, early stopping) are
  reduced across ranks, so every rank takes them at the same step.
- Every rank scores its share of the validation and test rows; the per-row scores are gathered in order.
- At the end the other ranks wait for rank 0 to finish testing and uploading (with a timeout that says what it
  waited for), so no rank leaves the job while rank 0 still works.

One process without torchrun is `Dist()` (world 1): every helper here is then a plain local operation.
"""
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where this rank computes, and where tensors for collectives live (NCCL takes only CUDA tensors)."""
    checkpoint_group: object = None
    """A gloo group of its own for async checkpoint saves: their collectives run in a background thread and must
    not interleave with the training collectives on the default group."""
    done_group: object = None
    """A gloo group for the end of the run (monitored_barrier takes a timeout per call, on gloo only)."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def local_main(self) -> bool:
        return self.local_rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, *values: float | torch.Tensor) -> list[float]:
        """Sums of per-rank numbers (or one-element tensors, e.g. a loss kept on the device) over all ranks
        (float64 on the collective device; one host sync)."""
        if any(isinstance(v, torch.Tensor) for v in values):
            t = torch.stack([torch.as_tensor(v, device=self.device).to(torch.float64).reshape(()) for v in values])
        else:
            t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any one (a SIGTERM that reached one rank stops them all)."""
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj) -> list | None:
        """Every rank's `obj` on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def local_first(self, fn):
        """Runs `fn` on the node's local rank 0 first (a download into the node's cache), then on the others,
        which find the cached result. An error on local rank 0 still releases the others."""
        return self._first(fn, self.local_main)

    def main_first(self, fn):
        """Runs `fn` on rank 0 first (tokenizing the data, which it shares under the run's prefix), then on the
        other ranks, which find its result (in the node's cache, or downloaded from the shared prefix). An error
        on rank 0 still releases the others."""
        return self._first(fn, self.main)

    def _first(self, fn, leads: bool):
        if self.world == 1:
            return fn()
        if leads:
            try:
                result = fn()
            finally:
                self.barrier()
            return result
        self.barrier()
        return fn()

    def wait_for_main(self, what: str, timeout_minutes: float) -> None:
        """The end of the run: rank 0 arrives when it has done `what`; the other ranks wait for it (torchrun's
        agents would otherwise see them finished and end the job while rank 0 still works). Raises TrainerError
        naming `what` after `timeout_minutes` (rank 0 stuck, or gone without failing the job)."""
        if self.world == 1:
            return
        from kubetune.trainer.errors import TrainerError

        try:
            torch.distributed.monitored_barrier(self.done_group, timeout=timedelta(minutes=timeout_minutes),
                                                wait_all_ranks=True)
        except RuntimeError as exc:
            raise TrainerError(f"rank {self.rank} waited {timeout_minutes:g} minutes for rank 0 to finish {what}; "
                               f"it did not ({str(exc)[:300]})") from exc


def init(cuda: bool, timeout_minutes: int) -> Dist:
    """The process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), each rank on its own GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world == 1:
        return Dist(device=device)
    import torch.distributed as dist

    if cuda:
        torch.cuda.set_device(device)  # before anything touches CUDA, or every rank lands on cuda:0
    # NCCL for CUDA tensors, gloo for CPU ones (object collectives, checkpoint coordination).
    dist.init_process_group("cuda:nccl,cpu:gloo" if cuda else "gloo", device_id=device if cuda else None,
                            timeout=timedelta(minutes=timeout_minutes))
    return Dist(dist.get_rank(), world, local_rank, device, done_group=dist.new_group(backend="gloo"))


def close(d: Dist) -> None:
    if d.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
