"""Data parallelism: one process (none), DDP (every rank holds the whole model) or FSDP2 (each rank holds a shard
of every weight, gradient and optimizer state; `torch.distributed.fsdp.fully_shard` per transformer block).

distributed.strategy auto picks FSDP on GPUs when the training state would not fit comfortably on one device, DDP
otherwise (always DDP on CPUs). Under FSDP the model is built on the meta device on every rank; rank 0 alone reads
the weights and broadcasts them into each rank's shard (set_model_state_dict with broadcast_from_rank0), so a node
holds one host copy of the base model instead of one per GPU. State dicts for checkpoints and artifacts go through
torch.distributed.checkpoint.state_dict, which speaks both wrappers.
"""
import torch

from kubetune.api import FineTuneJob
from kubetune.trainer.dist import Dist
from kubetune.trainer.errors import BadInput
from kubetune.trainer.unfreeze import gradual, transformer_blocks

# Bytes per parameter of training state on the device: full fine-tuning keeps fp32 weights, gradients and two AdamW
# moments (16); adapters keep a frozen bf16 base (2). Auto picks FSDP when this exceeds the share of the GPU below.
BYTES_PER_PARAM = {"full": 16, "lora": 2, "qlora": 1}
FIT_SHARE = 0.6  # the rest is activations, the CUDA context and fragmentation


def strategy(job: FineTuneJob, world: int, n_params: int, gpu_memory: int | None) -> str:
    """none (one process), ddp or fsdp; `gpu_memory`: bytes of one GPU (None on CPUs)."""
    chosen = job.spec.distributed.strategy
    if world == 1:
        return "none"
    if chosen == "auto":
        if gpu_memory is None or job.spec.method.type == "qlora" or gradual(job.spec.method.freeze):
            return "ddp"
        return "fsdp" if n_params * BYTES_PER_PARAM[job.spec.method.type] > FIT_SHARE * gpu_memory else "ddp"
    if chosen == "fsdp":
        if job.spec.method.type == "qlora":
            raise BadInput("distributed.strategy fsdp: method.type qlora is not supported (4-bit weights are not "
                           "sharded); use ddp or lora")
        if gradual(job.spec.method.freeze):
            raise BadInput("distributed.strategy fsdp: gradual unfreezing (method.freeze.unfreezeEvery*) is not "
                           "supported; use ddp")
    return chosen


def mixed_precision(device: torch.device, amp: torch.dtype | None):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and amp is not None:  # compute in amp, reduce gradients in fp32
        return MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model, dist: Dist, amp: torch.dtype | None):
    """FSDP2 on every transformer block, then on the root (embeddings, head and what is left)."""
    from torch.distributed.fsdp import fully_shard

    mp = mixed_precision(dist.device, amp)
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def materialise(model, reference, dist: Dist) -> None:
    """Moves a meta-device FSDP model to the device and fills it from rank 0's `reference` (a real model built
    the same way on the host; None on the other ranks): parameters and persistent buffers through the state-dict
    broadcast, then what state dicts leave out (non-persistent buffers such as rotary frequencies, tensors kept
    as plain attributes)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=dist.device)
    full = reference.state_dict() if reference is not None else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    ref_modules = dict(reference.named_modules()) if reference is not None else {}
    with torch.no_grad():
        for name, module in model.named_modules():
            for key, buf in list(module.named_buffers(recurse=False)):
                if key in module._non_persistent_buffers_set:
                    _broadcast_into(buf, ref_modules.get(name), key, dist)
            for key, value in list(vars(module).items()):
                if isinstance(value, torch.Tensor) and value.is_meta:
                    fresh = torch.empty_like(value, device=dist.device)
                    _broadcast_into(fresh, ref_modules.get(name), key, dist)
                    setattr(module, key, fresh)


def _broadcast_into(target: torch.Tensor, ref_module, key: str, dist: Dist) -> None:
    if dist.main:
        target.copy_(getattr(ref_module, key))
    torch.distributed.broadcast(target, src=0)


def unwrap(model):
    """The module under a DDP wrapper (FSDP2 wraps in place: the model is its own module)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state(model, trained_only: bool) -> dict:
    """The model's (trainable) weights as plain CPU tensors on rank 0 (collective under FSDP: every rank calls
    it; the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=trained_only))


def reshard(model) -> None:
    """After a forward without backward (scoring): FSDP keeps the root's weights gathered after its forward for
    the backward that normally follows; left so, the next training step's gradients of those weights never reach
    their shards (they would not train)."""
    if is_sharded(model):
        model.reshard()


def no_sync(model, sync: bool):
    """DDP: skips the gradient all-reduce of all but the last micro-batch of a step (each rank holds the whole
    gradient anyway; one all-reduce per step sends less). FSDP2: nothing is skipped. Its gradients are reduce-scattered
    after every micro-batch and accumulate as shards; skipping the reduction (set_requires_gradient_sync(False))
    would keep every block's full unsharded gradient until the last micro-batch, the memory FSDP is chosen to
    save when the model is too big (it trades one reduce-scatter per micro-batch for it)."""
    from contextlib import nullcontext

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return nullcontext() if sync else model.no_sync()
    return nullcontext()


def is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a (possibly replicated DTensor) result, e.g. FSDP's total gradient norm."""
    return t.full_tensor() if is_dtensor(t) else t
