"""Sequence classification (and regression with numLabels 1): labels, batches, the loss and scoring.

The shared loop in `loop.py` trains every task the same way; this module supplies what differs for a head on
top of an encoder or decoder: mapping label values (class names or ids) to ids, saved with the model as
id2label/label2id; padded batches with an attention mask (encoders attend both ways); a per-example loss,
weighted per class when classification.classWeights is set; and the per-example predictions that
`evaluation.py` turns into metrics, intervals and the error analysis. Every data error names the file and line.
"""
import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kubetune.api import FineTuneJob
from kubetune.api.spec import ClassificationSpec, Dataset
from kubetune.trainer import data as d
from kubetune.trainer.errors import BadInput
from kubetune.trainer.evaluation import Scored


def _as_id(value) -> int | None:
    """A class id written as an integer (JSON) or a string of digits (CSV), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _as_number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Labels:
    """The label space: class names in id order, or none for regression (one output)."""

    names: tuple[str, ...]
    column: str
    from_data: bool = False  # read from dataset.train rather than declared in classification.labels

    @property
    def regression(self) -> bool:
        return not self.names

    @property
    def num_labels(self) -> int:
        return len(self.names) or 1

    def target(self, value, source: str) -> int | float:
        """The training target of one label value: a class id, or a float for regression."""
        if self.regression:
            x = _as_number(value)
            if x is None:
                raise BadInput(f"{source}: label {value!r} in column {self.column!r} is not a number "
                               "(classification.numLabels 1 means regression on a numeric label)")
            return x
        index = {n: i for i, n in enumerate(self.names)}
        if isinstance(value, str) and value in index:
            return index[value]
        i = _as_id(value)
        if i is not None and 0 <= i < len(self.names):
            return i
        shown = ", ".join(self.names[:20]) + (", ..." if len(self.names) > 20 else "")
        hint = "; they were read from dataset.train: list every class in classification.labels" \
            if self.from_data else ""
        raise BadInput(f"{source}: unknown label {value!r} in column {self.column!r}; the labels are {shown} "
                       f"(class names or ids 0..numLabels-1){hint}")

    def model_kwargs(self) -> dict:
        """Config overrides that give the model its head and carry the mapping into the saved config."""
        if self.regression:
            return {"num_labels": 1, "problem_type": "regression"}
        return {"num_labels": len(self.names), "problem_type": "single_label_classification",
                "id2label": dict(enumerate(self.names)), "label2id": {n: i for i, n in enumerate(self.names)}}


def label_space(job: FineTuneJob, records: list[d.Record]) -> Labels:
    """Labels from classification.labels, else from the training data (ids as they are, names sorted)."""
    spec = job.spec.classification or ClassificationSpec()
    column = job.spec.dataset.columns.label
    if spec.num_labels == 1:
        labels = Labels((), column)
    elif spec.labels:
        if spec.num_labels is not None and spec.num_labels != len(spec.labels):
            raise BadInput(f"classification.numLabels {spec.num_labels} does not match the {len(spec.labels)} "
                           f"classification.labels {spec.labels}")
        labels = Labels(tuple(spec.labels), column)
    else:
        values = []
        for rec in records:
            if column not in rec.fields:
                raise BadInput(f"{rec.source}: missing column {column!r} (columns: {sorted(rec.fields)})")
            v = rec.fields[column]
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise BadInput(f"{rec.source}: label {v!r} in column {column!r} must be a class name or id; "
                               "for regression set classification.numLabels: 1")
            values.append(v)
        ids = [_as_id(v) for v in values]
        if all(i is not None for i in ids):
            n = spec.num_labels or max(ids) + 1
            if max(ids) >= n:
                raise BadInput(f"dataset.train: label id {max(ids)} in column {column!r} is out of range for "
                               f"classification.numLabels {n}")
            names = tuple(str(i) for i in range(n))
        else:
            names = tuple(sorted({str(v) for v in values}))
            if spec.num_labels is not None and spec.num_labels != len(names):
                raise BadInput(f"classification.numLabels {spec.num_labels} does not match the {len(names)} "
                               f"labels in dataset.train column {column!r}: {', '.join(names[:20])}")
        if len(names) < 2:
            raise BadInput(f"dataset.train: column {column!r} holds a single class {names[0]!r}; classification "
                           "needs at least two (classification.numLabels: 1 for regression)")
        labels = Labels(names, column, from_data=True)
    weights = spec.class_weights
    if weights is not None:
        if labels.regression or len(weights) != labels.num_labels:
            raise BadInput(f"classification.classWeights has {len(weights)} values for {labels.num_labels} "
                           f"labels ({', '.join(labels.names) or 'regression has no classes'})")
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise BadInput(f"classification.classWeights {weights}: weights must be non-negative, one positive")
    return labels


def labels_for(job: FineTuneJob, store) -> Labels:
    """The label space of a job, read before the model is built (the head's size depends on it)."""
    ds = job.spec.dataset
    return label_space(job, d.read_records(store.fetch(ds.train, "dataset.train"), ds.format, ds.train))


def head_modules(model) -> list[str]:
    """The top-level modules outside the pretrained backbone: the new head (classifier, score, pre_classifier...),
    which LoRA must train in full and save with the adapter."""
    return [name for name, m in model.named_children()
            if name != model.base_model_prefix and any(True for _ in m.parameters())]


def encode(records: list[d.Record], tok, dataset: Dataset, labels: Labels, stats: d.Stats) -> list[dict]:
    """Token ids (special tokens included) and the target of each record, after maxSeqLength/longSequences."""
    out, limit = [], dataset.max_seq_length
    for rec in records:
        text = d._field(rec, dataset.columns.text)
        if labels.column not in rec.fields:
            raise BadInput(f"{rec.source}: missing column {labels.column!r} (columns: {sorted(rec.fields)})")
        target = labels.target(rec.fields[labels.column], rec.source)
        ids = tok(text)["input_ids"]
        if len(ids) > limit:
            if dataset.long_sequences == "drop":
                stats.dropped_too_long += 1
                continue
            ids = tok(text, truncation=True, max_length=limit)["input_ids"]  # keeps the closing special token
            stats.truncated += 1
        stats.examples += 1
        out.append({"input_ids": ids, "label": target, "source": rec.source, "text": text})
    return out


class Classification:
    """The classification/regression counterpart of the causal-LM functions the loop calls."""

    def __init__(self, labels: Labels, class_weights: list[float] | None):
        self.labels = labels
        self.weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    def collate(self, rows: list[dict], pad_id: int) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        dtype = torch.float32 if self.labels.regression else torch.long
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([r["label"] for r in rows], dtype=dtype)}

    def weight(self, labels: torch.Tensor) -> torch.Tensor:
        """Each example's share of the loss: its class weight, or 1."""
        if self.weights is None or self.labels.regression:
            return torch.ones(len(labels))
        return self.weights[labels]

    def targets(self, batch: dict) -> float:
        """The loss normaliser of a batch, so that a step's loss is a weighted mean over all its examples."""
        return float(self.weight(batch["labels"]).sum())

    def forward(self, model, batch: dict, device, amp) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example weighted loss and the logits."""
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits.float()
        y = batch["labels"].to(device)
        if self.labels.regression:
            loss = (logits.squeeze(-1) - y) ** 2
        else:
            loss = F.cross_entropy(logits, y, reduction="none")
        return loss * self.weight(batch["labels"]).to(device), logits

    def losses(self, model, batch: dict, device, amp) -> torch.Tensor:
        return self.forward(model, batch, device, amp)[0]

    @torch.no_grad()
    def score(self, model, examples: list, micro: int, pad_id: int, device, amp) -> Scored:
        model.eval()
        order = d.length_order(examples)
        examples = [examples[i] for i in order]
        loss, weight, pred, conf = [], [], [], []
        for i in range(0, len(examples), micro):
            batch = self.collate(examples[i: i + micro], pad_id)
            l, logits = self.forward(model, batch, device, amp)
            loss += l.tolist()
            weight += self.weight(batch["labels"]).tolist()
            if self.labels.regression:
                pred += logits.squeeze(-1).tolist()
            else:
                p = logits.softmax(-1)
                pred += p.argmax(-1).tolist()
                conf += p.max(-1).values.tolist()
        model.train()
        kind = "regression" if self.labels.regression else "classification"
        y = np.array([e["label"] for e in examples])
        scored = Scored(kind, loss=np.array(loss), weight=np.array(weight), y_true=y, y_pred=np.array(pred),
                        confidence=np.array(conf) if conf else None, num_classes=len(self.labels.names))
        return scored.take(np.argsort(order))

    def constant_baseline(self, train_rows: list, examples: list) -> tuple[str, Scored]:
        """What a model that ignores its input would score: the majority training class, or the training mean."""
        from kubetune.trainer.scoring import majority_class

        y_train = np.array([r["label"] for r in train_rows])
        y = np.array([e["label"] for e in examples])
        if self.labels.regression:
            mean = float(y_train.mean())
            return f"always predicts {mean:.4g}, the training mean", Scored(
                "regression", y_true=y, y_pred=np.full(len(y), mean))
        k = majority_class(y_train)
        return f"always predicts {self.labels.names[k]!r}, the most frequent training label", Scored(
            "classification", y_true=y, y_pred=np.full(len(y), k), num_classes=len(self.labels.names))

    def errors(self, model, scored: Scored, examples: list, indices: list[int], device, amp) -> list[dict]:
        """Rows of errors.jsonl: where each example came from, its text, reference, prediction and loss."""
        rows = []
        for i in indices:
            ex = examples[i]
            row = {"source": ex["source"], "text": ex["text"][:2000],
                   "loss": round(float(scored.loss[i] / max(scored.weight[i], 1e-12)), 5)}
            if self.labels.regression:
                row.update(reference=float(scored.y_true[i]), prediction=round(float(scored.y_pred[i]), 5))
            else:
                names = self.labels.names
                row.update(reference=names[int(scored.y_true[i])], prediction=names[int(scored.y_pred[i])],
                           confidence=round(float(scored.confidence[i]), 4))
            rows.append(row)
        return rows
