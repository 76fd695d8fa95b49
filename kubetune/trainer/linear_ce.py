"""The output projection and the cross-entropy over chunks of tokens: never B x L x V logits at once.

A causal LM's last step, `logits = head(hidden)` then cross-entropy, holds B x L x V logits (fp32 copies of them,
their softmax and their gradient) for the backward: at Qwen's 152k vocabulary and 2048 tokens that is gigabytes per
row, more than the rest of a small model's activations. Here the model runs with its head skipped (its forward
returns the final hidden states), only the positions that have a target are projected, chunk by chunk, and each
chunk's gradients (w.r.t. the hidden states and, where it trains, the head) are computed in the forward, while the
chunk's logits exist (as Liger's fused linear cross-entropy does, in plain torch): the backward only scales them.
On CUDA with liger-kernel installed, Liger's Triton kernel does the same (`kernel`); scoring stays here.
Peak memory: one chunk of logits. Compute: the same three matmuls as unfused, and none for prompt positions.

`HeadSkip.probe` checks once per model that "head(hidden states)" reproduces the model's own logits (models that
scale or soft-cap logits after the head fail it and keep the plain path).
"""
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

IGNORE = -100
CHUNK_LOGITS = 1 << 25  # logits per chunk: 128 MiB in fp32 (512 tokens at a 64k vocabulary)


def chunk_tokens(vocab: int) -> int:
    return max(1, CHUNK_LOGITS // vocab)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of -log softmax(hidden @ weight.T + bias)[label]; rows are positions that have a target."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk: int):
        dtype = _compute_dtype(hidden)
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            h_all = hidden.to(dtype)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for a in range(0, hidden.shape[0], chunk):
                h, y = h_all[a: a + chunk], labels[a: a + chunk]
                # log_softmax is one fused kernel (logsumexp and a subtraction are several passes)
                logp = F.linear(h, w, b).float().log_softmax(-1)
                total -= logp.gather(1, y[:, None]).sum()
                if not (need_h or need_w or need_b):
                    continue
                g = logp.exp_()  # the softmax, in place: d(-log p[y]) / d logits = softmax - onehot(y)
                g.scatter_add_(1, y[:, None], torch.full((len(y), 1), -1.0, device=g.device))
                g = g.to(dtype)
                if need_h:
                    grad_h[a: a + chunk] = g @ w
                if need_w:
                    grad_w += (g.t() @ h).float()
                if need_b:
                    grad_b += g.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes

        def scaled(g, dtype):
            return None if g is None else (g * grad_out).to(dtype)
        return scaled(grad_h, h_dtype), scaled(grad_w, w_dtype), scaled(grad_b, b_dtype), None, None


def targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From a batch's labels (on the host, so that no device sync is needed for their count): the flat indices of
    the positions that predict a label (position t predicts label t + 1), those labels, and their rows."""
    y = labels[:, 1:]
    where = (y != IGNORE).reshape(-1).nonzero().squeeze(1)
    return where, y.reshape(-1)[where], torch.div(where, y.shape[1], rounding_mode="floor")


def _select(hidden: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    return h if len(where) == h.shape[0] else h.index_select(0, where)


def kernel(device: torch.device) -> str:
    """Which fused linear + cross-entropy trains: "liger" (Liger's Triton kernel: the same math, fewer passes over
    the logits) on CUDA where liger-kernel is installed, else "torch" (_LinearCrossEntropy, every device)."""
    import importlib.util

    return "liger" if device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None else "torch"


def _liger_loss_sum(h: torch.Tensor, head: torch.nn.Linear, y: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    dtype = _compute_dtype(h)  # Liger takes the input and the weights in one dtype (autocast does not reach it)
    out = liger_fused_linear_cross_entropy(h.to(dtype), head.weight.to(dtype),
                                           y, head.bias.to(dtype) if head.bias is not None else None,
                                           ignore_index=IGNORE, reduction="sum")
    # A tensor, or (loss, z_loss, ...) / an output object in some versions
    loss = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)
    return loss.float()


def loss_sum(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor) -> torch.Tensor:
    """The summed token loss of a batch (a scalar, differentiable w.r.t. hidden and the head's weights); `labels`
    may stay on the host."""
    where, y, _ = (t.to(hidden.device, non_blocking=True) for t in targets(labels))
    h = _select(hidden, where)
    if kernel(hidden.device) == "liger":
        return _liger_loss_sum(h, head, y)
    return _LinearCrossEntropy.apply(h, head.weight, head.bias, y, chunk_tokens(head.out_features))


@torch.no_grad()
def token_stats(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor):
    """Per-row summed loss, target-token count and correct next-token predictions (scoring; no gradients)."""
    where, y, rows = (t.to(hidden.device, non_blocking=True) for t in targets(labels))
    h = _select(hidden, where)
    n = labels.shape[0]
    sums = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    correct = torch.zeros(n, dtype=torch.long, device=hidden.device)
    chunk = chunk_tokens(head.out_features)
    for a in range(0, len(y), chunk):
        logits = head(h[a: a + chunk]).float()
        yc, rc = y[a: a + chunk], rows[a: a + chunk]
        sums.index_add_(0, rc, -logits.log_softmax(-1).gather(1, yc[:, None]).squeeze(1))
        correct.index_add_(0, rc, (logits.argmax(-1) == yc).long())
    counts = torch.bincount(rows, minlength=n)
    return sums, counts, correct


class HeadSkip:
    """Runs a causal LM with its output head skipped (the forward's `logits` are the final hidden states)."""

    def __init__(self, head: torch.nn.Linear):
        self.head = head

    @classmethod
    def of(cls, model) -> "HeadSkip | None":
        """The model's head when it is a plain linear layer (not a LoRA-wrapped head); None otherwise. Under FSDP2
        its weight is a shard between steps, but the root module's weights stay gathered from its forward to its
        backward, which is when the loss uses them (and their gradient is reduced with the root's)."""
        from kubetune.trainer import parallel

        head = parallel.unwrap(model).get_output_embeddings()
        return cls(head) if type(head) is torch.nn.Linear else None

    @contextmanager
    def skipped(self):
        self.head.forward = _identity  # an instance attribute shadows the class's forward for this call
        try:
            yield
        finally:
            del self.head.forward

    @torch.no_grad()
    def probe(self, model, vocab: int, device, amp) -> bool:
        """True when head(hidden states) equals the model's own logits on a short input."""
        ids = (torch.arange(12, device=device) * 7 % vocab)[None]
        training = model.training
        model.eval()  # the same dropout-free forward both times
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            logits = model(input_ids=ids, use_cache=False).logits.float()
            with self.skipped():
                hidden = model(input_ids=ids, use_cache=False).logits
            mine = self.head(hidden).float()
        model.train(training)
        return mine.shape == logits.shape and torch.allclose(mine, logits, rtol=1e-3, atol=1e-3 * logits.abs().max())


def _identity(x):
    return x
