"""Padding-free batching: a micro-batch's examples concatenated into one row, with no padding, position ids that
restart at every example, and attention that never crosses examples.

The same examples make each step as with padding, so the losses are the same (up to float rounding): what goes
is the padding's compute and, for attention, the cross-example part of a packed row. Transformers, given packed
position ids, builds a dense T x T block-diagonal mask and runs attention over the whole row (the cost of one
T-token sequence, T = the sum of the lengths); here attention runs per example instead:
- CUDA in bf16/fp16: torch's flash-attention varlen kernel (`torch.nn.attention.varlen.varlen_attn`), one call;
- otherwise (CPUs, fp32, attention dropout): causal SDPA on each example's slice (no mask to build or read).

It plugs in as a transformers attention implementation (AttentionInterface), so it applies to every model that
routes attention through that interface (`_supports_attention_backend`); `probe` checks, once per model, that an
example's logits are the same alone and packed beside another, and the trainer keeps padded batches otherwise.
The examples' lengths reach the attention as a keyword argument of the forward (transformers passes unknown keyword
arguments down to the attention), so activation checkpointing's recomputation sees them too.
"""
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

IGNORE = -100
NAME = "kubetune_varlen"
LENGTHS = "kubetune_lengths"  # the forward's keyword: a tuple of the examples' lengths, in order
CU_SEQLENS = "kubetune_cu_seqlens"  # the same as int32 offsets [0, l0, l0 + l1, ...] for the CUDA kernel
_packed_forward = {"on": False}


def collate(rows: list[dict], pad_id: int) -> dict:
    """One row [1, T]: the examples (or packed rows) one after the other, position ids restarting per example, the
    first label of every example ignored (it is not predicted from the example before)."""
    ids = np.concatenate([np.asarray(r["input_ids"], dtype=np.int64) for r in rows])
    labels = np.concatenate([np.asarray(r["labels"], dtype=np.int64) for r in rows])
    lengths = []
    for r in rows:
        pos = r.get("position_ids")
        if pos is None:
            lengths.append(len(r["input_ids"]))
        else:  # a packed row: its examples start where the position is 0
            starts = np.flatnonzero(np.asarray(pos) == 0).tolist() + [len(pos)]
            lengths += [b - a for a, b in zip(starts, starts[1:])]
    cu = np.concatenate([[0], np.cumsum(lengths)])
    labels[cu[:-1]] = IGNORE
    pos = np.arange(len(ids)) - np.repeat(cu[:-1], lengths)
    return {"input_ids": torch.from_numpy(ids)[None], "labels": torch.from_numpy(labels)[None],
            "position_ids": torch.from_numpy(pos)[None], LENGTHS: tuple(lengths),
            CU_SEQLENS: torch.from_numpy(cu.astype(np.int32))}


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention interface: query [1, Hq, T, D], key/value [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    lengths, cu = kwargs.pop(LENGTHS, None), kwargs.pop(CU_SEQLENS, None)
    if lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and not dropout and cu is not None:
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
        longest = max(lengths)
        out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])
        return out[None], None
    if len(set(lengths)) == 1:  # equal lengths (full rows): one batched call, as padded rows would make
        n = len(lengths)
        q, k, v = (t[0].unflatten(1, (n, lengths[0])).transpose(0, 1) for t in (query, key, value))  # [n, H, L, D]
        out, _ = sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True)
        return out.reshape(1, -1, *out.shape[2:]), None  # [n, L, H, D] -> [1, T, H, D]
    # split, not slicing: its backward is one concatenation, where each slice's backward fills a whole zero tensor
    outs = [sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True)[0]
            for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(outs, dim=1), None


def _mask(*args, **kwargs):
    """No mask for a padding-free forward (attention() splits the row); sdpa's otherwise."""
    from transformers.masking_utils import sdpa_mask

    return None if _packed_forward["on"] else sdpa_mask(*args, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, _mask)


@contextmanager
def packed_forward():
    _packed_forward["on"] = True
    try:
        yield
    finally:
        _packed_forward["on"] = False


def forward_kwargs(batch: dict, device) -> dict:
    """What a padding-free batch adds to the model's forward (nothing for a padded one)."""
    if LENGTHS not in batch:
        return {}
    return {LENGTHS: batch[LENGTHS], CU_SEQLENS: batch[CU_SEQLENS].to(device, non_blocking=True)}


def enable(model) -> bool:
    """Switches the model's attention to `attention` when it routes attention through transformers' interface,
    uses SDPA today and has no sliding-window layers (per-example attention here is full causal); False (nothing
    changed) otherwise."""
    pretrained = transformers_model(model)
    if pretrained is None or not getattr(pretrained, "_supports_attention_backend", False) \
            or pretrained.config._attn_implementation != "sdpa" or sliding(pretrained.config):
        return False
    register()
    pretrained.set_attn_implementation(NAME)
    return True


def sliding(config) -> bool:
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return True
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True) is not False


def disable(model) -> None:
    pretrained = transformers_model(model)
    if pretrained is not None and pretrained.config._attn_implementation == NAME:
        pretrained.set_attn_implementation("sdpa")


def transformers_model(model):
    from transformers import PreTrainedModel

    from kubetune.trainer import parallel

    m = parallel.unwrap(model)
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    return m if isinstance(m, PreTrainedModel) else None


def probe(model, vocab: int, device, amp) -> bool:
    """True when two examples packed into one row give the logits each gives alone (False, not an error, where a
    kernel refuses the device or dtype: the run keeps padded batches)."""
    try:
        return _probe(model, vocab, device, amp)
    except (RuntimeError, NotImplementedError) as exc:
        import logging

        logging.getLogger(__name__).warning("padding-free batching is off: %s", exc)
        model.train()
        return False


@torch.no_grad()
def _probe(model, vocab: int, device, amp) -> bool:
    a = (torch.arange(9) * 5 + 3) % vocab
    b = (torch.arange(6) * 11 + 1) % vocab
    training = model.training
    model.eval()
    with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
        alone = [model(input_ids=x[None].to(device), use_cache=False).logits[0].float() for x in (a, b)]
        batch = collate([{"input_ids": a.tolist(), "labels": a.tolist()}, {"input_ids": b.tolist(), "labels": b.tolist()}], 0)
        with packed_forward():
            packed = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                           use_cache=False, **forward_kwargs(batch, device)).logits[0].float()
    model.train(training)
    want = torch.cat(alone)
    return packed.shape == want.shape and torch.allclose(packed, want, rtol=1e-3, atol=1e-3 * want.abs().max())
