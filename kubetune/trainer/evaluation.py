"""From per-example scores to what the run reports: metrics, 95% bootstrap intervals, baseline comparisons,
per-class metrics and the worst examples.

Scoring a model on a split yields a `Scored` (one entry per example), for every task; everything else is a
function of it, so a baseline scored before training and the fine-tuned model scored after are compared on the
same examples with a paired bootstrap (the same resampled rows for both), which is what makes the difference's
interval narrow enough to mean something.
"""
import math
from dataclasses import dataclass, fields, replace

import numpy as np

from kubetune.trainer import scoring

RESAMPLES = 1000
ERRORS_KEPT = 100
CONFUSION_MAX_CLASSES = 100  # beyond, the matrix would dwarf the summary; per-class metrics still come


@dataclass
class Scored:
    kind: str  # causal-lm | classification | regression
    loss: np.ndarray | None = None  # per example: summed (class-weighted) loss
    weight: np.ndarray | None = None  # per example: target tokens (causal LM) or class weight
    correct: np.ndarray | None = None  # causal LM: target tokens predicted right
    y_true: np.ndarray | None = None  # classification / regression reference
    y_pred: np.ndarray | None = None  # predicted class id or value
    confidence: np.ndarray | None = None  # classification: probability of the predicted class
    num_classes: int = 0

    def __len__(self) -> int:
        return len(self.loss if self.loss is not None else self.y_true)

    def take(self, idx: np.ndarray) -> "Scored":
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)
                                if isinstance(getattr(self, f.name), np.ndarray)})


def concat(parts: list[Scored]) -> Scored:
    """The examples of each part, one part after the other (the ranks' shares of a split)."""
    first = parts[0]
    return replace(first, **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(first)
                             if isinstance(getattr(first, f.name), np.ndarray)})


def _loss(s: Scored) -> float:
    return scoring.token_weighted_loss(s.loss, s.weight)


# name -> metric of a Scored, per task, in the order they are logged (kubetune.api.spec.metrics_for).
METRICS = {
    "causal-lm": {
        "loss": _loss,
        "perplexity": lambda s: math.exp(min(_loss(s), 50.0)),
        "tokenAccuracy": lambda s: float(np.sum(s.correct) / max(np.sum(s.weight), 1)),
        "exactMatch": lambda s: float(np.mean(s.correct == s.weight)),  # every target token right
    },
    "classification": {
        "loss": _loss,
        "accuracy": lambda s: scoring.accuracy(s.y_true, s.y_pred),
        "f1": lambda s: scoring.macro("f1", s.num_classes)(s.y_true, s.y_pred),
        "precision": lambda s: scoring.macro("precision", s.num_classes)(s.y_true, s.y_pred),
        "recall": lambda s: scoring.macro("recall", s.num_classes)(s.y_true, s.y_pred),
    },
    "regression": {
        "loss": _loss,
        "mse": lambda s: scoring.mse(s.y_true, s.y_pred),
        "mae": lambda s: scoring.mae(s.y_true, s.y_pred),
        "r2": lambda s: scoring.r2(s.y_true, s.y_pred),
    },
}


def _available(s: Scored) -> dict:
    """The metrics this score supports (a constant baseline has predictions but no loss)."""
    return {k: f for k, f in METRICS[s.kind].items() if k != "loss" or s.loss is not None}


def metrics(s: Scored) -> dict[str, float]:
    return {k: f(s) for k, f in _available(s).items()}


def _interval(metric, s: Scored, base: Scored | None, seed: int) -> scoring.Interval:
    def stat(idx: np.ndarray) -> float:
        value = metric(s.take(idx))
        return value - metric(base.take(idx)) if base is not None else value

    return scoring.bootstrap(stat, np.arange(len(s)), resamples=RESAMPLES, seed=seed)


def with_intervals(s: Scored, seed: int = 0) -> dict[str, float]:
    """Each metric with the bounds of its 95% percentile-bootstrap interval: {f1, f1Low, f1High, ...}."""
    out = {}
    for name, metric in _available(s).items():
        ci = _interval(metric, s, None, seed)
        out.update({name: ci.value, f"{name}Low": ci.low, f"{name}High": ci.high})
    return out


def compare(new: Scored, base: Scored, seed: int = 0) -> dict[str, dict]:
    """metric(fine-tuned) - metric(baseline) on the same examples, with a paired-bootstrap 95% interval."""
    if len(new) != len(base):
        raise ValueError(f"cannot pair {len(new)} scored examples with {len(base)}")
    out = {}
    for name, metric in _available(base).items():
        if name not in _available(new):
            continue
        ci = _interval(metric, new, base, seed)
        out[name] = {**ci.to_dict(), "excludesZero": ci.excludes(0.0)}
    return out


def per_class(s: Scored, names: tuple[str, ...]) -> dict[str, dict]:
    table = scoring.per_class(s.y_true, s.y_pred, s.num_classes)
    return {n: {k: (int(v[i]) if k == "support" else float(v[i])) for k, v in table.items()}
            for i, n in enumerate(names)}


def confusion(s: Scored, names: tuple[str, ...]) -> dict:
    """Rows are the reference class, columns the prediction."""
    return {"labels": list(names), "matrix": scoring.confusion_matrix(s.y_true, s.y_pred, s.num_classes).tolist()}


def worst(s: Scored, k: int = ERRORS_KEPT) -> list[int]:
    """Indices of the k worst examples: misclassified by loss (classification), largest error (regression),
    highest loss per target token (causal LM)."""
    if s.kind == "classification":
        wrong = np.flatnonzero(s.y_true != s.y_pred)
        per_example = s.loss / np.maximum(s.weight, 1e-12) if s.loss is not None else -s.confidence
        return wrong[np.argsort(-per_example[wrong], kind="stable")][:k].tolist()
    badness = np.abs(s.y_true - s.y_pred) if s.kind == "regression" else s.loss / np.maximum(s.weight, 1)
    return np.argsort(-badness, kind="stable")[:k].tolist()


def report(scored: Scored, base: Scored | None, constant: tuple[str, Scored] | None,
           names: tuple[str, ...] = ()) -> dict:
    """The test-set part of summary.json: metrics with intervals, each baseline with the paired difference, and
    for classification the per-class metrics and the confusion matrix."""
    out: dict = {"test": with_intervals(scored)}
    comparison = {}
    if base is not None:
        comparison["baseModel"] = {"description": "the untouched base model", "test": with_intervals(base),
                                   "difference": compare(scored, base)}
    if constant is not None:
        description, c = constant
        key = "majorityClass" if c.kind == "classification" else "trainMean"
        comparison[key] = {"description": description, "test": with_intervals(c), "difference": compare(scored, c)}
    if comparison:
        out["comparison"] = comparison
    if scored.kind == "classification":
        out["perClass"] = per_class(scored, names)
        if len(names) <= CONFUSION_MAX_CLASSES:
            out["confusionMatrix"] = confusion(scored, names)
    return out


HEADLINE_PREFERENCE = ("f1", "mse", "loss")  # by task, after the early-stopping metric


def headline(report: dict, monitored: str) -> list[dict]:
    """One line per baseline for the status and the termination message: the fine-tuned model against it on the
    test set for the monitored metric (or the task's usual one), with the paired interval of the difference."""
    lines = []
    for against, c in report.get("comparison", {}).items():
        available = c["difference"]
        name = next((m for m in (monitored, *HEADLINE_PREFERENCE) if m in available), next(iter(available), None))
        if name is None:
            continue
        diff = available[name]
        lines.append({"against": against, "metric": name, "baseline": c["test"][name],
                      "fineTuned": report["test"][name], "difference": diff["value"], "low": diff["low"],
                      "high": diff["high"], "excludesZero": diff["excludesZero"]})
    return lines
