"""The causal-LM side of the loop (classify.py is the classifier's): batches, the per-token loss, scoring and the
error analysis. The loop calls the same few functions of either.
"""
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from kubetune.trainer import data as d
from kubetune.trainer import evaluation as ev
from kubetune.trainer import linear_ce, varlen
from kubetune.trainer.linear_ce import HeadSkip

SAMPLES = 3  # held-out prompts answered before and after training (report.html)
SAMPLE_TOKENS = 48


def model_output(model, batch: dict, device, amp, skip: HeadSkip | None = None) -> torch.Tensor:
    """The model's logits, or with `skip` its final hidden states (the head is applied in chunks by the loss). A
    padding-free batch (varlen.collate) carries its examples' lengths to the attention."""
    extra = varlen.forward_kwargs(batch, device)
    # No KV cache: with one, transformers skips deriving per-example attention from packed position ids.
    with torch.autocast(device.type, dtype=amp) if amp else nullcontext(), \
            varlen.packed_forward() if extra else nullcontext(), skip.skipped() if skip else nullcontext():
        return model(input_ids=batch["input_ids"].to(device, non_blocking=True),
                     position_ids=batch["position_ids"].to(device, non_blocking=True), use_cache=False, **extra).logits


def forward_logits(model, batch: dict, device, amp) -> torch.Tensor:
    return model_output(model, batch, device, amp)


def token_losses(model, batch: dict, device, amp, skip: HeadSkip | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row summed loss, target-token count and correct next-token predictions."""
    if skip is not None:
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            return linear_ce.token_stats(model_output(model, batch, device, amp, skip), skip.head, batch["labels"])
    labels = batch["labels"][:, 1:].to(device, non_blocking=True)
    logits = model_output(model, batch, device, amp)[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=d.IGNORE,
                           reduction="none").view(labels.shape)
    mask = labels != d.IGNORE
    correct = ((logits.argmax(-1) == labels) & mask).sum(1)
    return loss.sum(1), mask.sum(1), correct


def loss_sum(model, batch: dict, device, amp, skip: HeadSkip | None = None) -> torch.Tensor:
    """The batch's summed token loss, a scalar for the backward: with `skip`, chunked linear + cross-entropy on the
    hidden states (linear_ce.py); else cross-entropy on the full logits. No argmax either way."""
    if skip is not None:  # the labels stay on the host: the targets are counted there
        return linear_ce.loss_sum(model_output(model, batch, device, amp, skip), skip.head, batch["labels"])
    labels = batch["labels"].to(device, non_blocking=True)
    logits = model_output(model, batch, device, amp)[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
                           ignore_index=d.IGNORE, reduction="sum")


class CausalLM:
    """What the loop calls per task, for causal LMs (classify.Classification is the classifier's). `skip`: the
    model's head when the chunked loss applies to it (linear_ce.HeadSkip); `padding_free`: training micro-batches
    are one unpadded row each (varlen.py)."""

    def __init__(self, tok=None, skip: HeadSkip | None = None, padding_free: bool = False):
        self.tok, self.skip, self.padding_free = tok, skip, padding_free

    def collate(self, rows: list[dict], pad_id: int) -> dict:
        return (varlen.collate if self.padding_free else d.collate)(rows, pad_id)

    @staticmethod
    def targets(batch: dict) -> float:
        """The loss normaliser: target tokens (labels are shifted by one against the inputs)."""
        return float((batch["labels"][:, 1:] != d.IGNORE).sum())

    def losses(self, model, batch: dict, device, amp) -> torch.Tensor:
        return loss_sum(model, batch, device, amp, self.skip)

    @torch.no_grad()
    def score(self, model, examples: list, micro: int, pad_id: int, device, amp) -> ev.Scored:
        model.eval()
        order = d.length_order(examples)
        sums, counts, correct = [], [], []
        for i in range(0, len(examples), micro):
            s, n, c = token_losses(model, d.collate([examples[j] for j in order[i: i + micro]], pad_id), device, amp,
                                   self.skip)
            sums += s.tolist()
            counts += n.tolist()
            correct += c.tolist()
        model.train()
        scored = ev.Scored("causal-lm", loss=np.array(sums), weight=np.array(counts), correct=np.array(correct))
        return scored.take(np.argsort(order))

    @torch.no_grad()
    def errors(self, model, scored: ev.Scored, examples: list, indices: list[int], device, amp) -> list[dict]:
        """Rows of errors.jsonl. The prediction is teacher-forced: the model's most likely token at each target
        position given the reference before it (it equals greedy decoding where the example is an exact match)."""
        model.eval()
        rows = []
        for i in indices:
            ex = examples[i]
            labels = torch.tensor(ex["labels"][1:])
            logits = forward_logits(model, d.collate([ex], 0), device, amp)[0, :-1]
            where = labels != d.IGNORE
            rows.append({"source": ex.get("source"), "input": self.tok.decode(ex["input_ids"])[:2000],
                         "reference": self.tok.decode(labels[where]),
                         "prediction": self.tok.decode(logits.argmax(-1).cpu()[where]),
                         "loss": round(float(scored.loss[i] / max(scored.weight[i], 1)), 5),
                         "targetTokens": int(scored.weight[i])})
        model.train()
        return rows

    @torch.no_grad()
    def answers(self, model, examples, device, amp, n: int = SAMPLES, max_new_tokens: int = SAMPLE_TOKENS
                ) -> list[dict]:
        """The model's greedy answers to the prompts of the first `n` examples that have one (the tokens before
        their first target), at most `max_new_tokens` each, up to the end of sequence or the end-of-turn token
        that closes the example's target (a chat template's), for report.html's before/after samples. A plain loop
        of whole forwards (no KV cache, no generate()): a few short answers, the same on any model this loop
        trains."""
        model.eval()
        rows = []
        for i in range(len(examples)):
            if len(rows) == n:
                break
            ids, labels = list(examples[i]["input_ids"]), list(examples[i]["labels"])
            first = next((t for t, x in enumerate(labels) if x != d.IGNORE), 0)
            if first == 0:  # no prompt to answer (prompts not masked, or a plain-text row)
                continue
            end = next((t for t in range(first, len(labels)) if labels[t] == d.IGNORE), len(labels))
            stops = {self.tok.eos_token_id} | ({ids[end - 1]} if ids[end - 1] in self.tok.all_special_ids else set())
            out = torch.tensor([ids[:first]], device=device)
            for _ in range(max_new_tokens):
                with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
                    logits = model(input_ids=out, use_cache=False).logits[0, -1]
                token = int(logits.argmax())
                if token in stops:
                    break
                out = torch.cat([out, torch.tensor([[token]], device=device)], dim=1)
            rows.append({"prompt": self.tok.decode(ids[:first]),
                         "reference": self.tok.decode(ids[first:end], skip_special_tokens=True),
                         "answer": self.tok.decode(out[0, first:].tolist(), skip_special_tokens=True)})
        model.train()
        return rows
