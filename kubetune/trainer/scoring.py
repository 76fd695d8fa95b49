"""Task metrics and their confidence intervals, as plain functions of arrays.

Fine-tuning is worth its GPUs only if it measurably beats the base model, so every final test metric comes with
a percentile-bootstrap confidence interval, and a baseline comparison is a paired bootstrap of the difference.
Nothing here knows about models or torch: predictions in, numbers out, so each metric is testable by hand.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

Metric = Callable[..., float]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are the true class, columns the predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class; 0 where a ratio has no denominator (as scikit-learn).
    Counted without the confusion matrix: the bootstrap calls this thousands of times, and classes may be many."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = np.bincount(y_true[y_true == y_pred], minlength=num_classes).astype(float)
    predicted = np.bincount(y_pred, minlength=num_classes)
    actual = np.bincount(y_true, minlength=num_classes)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def macro(name: str, num_classes: int) -> Metric:
    """Macro average (unweighted mean over classes) of precision, recall or f1."""

    def metric(y_true, y_pred) -> float:
        return float(per_class(y_true, y_pred, num_classes)[name].mean())

    metric.__name__ = f"macro_{name}"
    return metric


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean((np.asarray(y_true, float) - np.asarray(y_pred, float)) ** 2))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float))))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    total = np.sum((y_true - y_true.mean()) ** 2)
    return float(1.0 - np.sum((y_true - y_pred) ** 2) / total) if total > 0 else 0.0


def token_weighted_loss(loss_sums: np.ndarray, token_counts: np.ndarray) -> float:
    """Mean loss per target token over examples given each example's summed loss and its token count."""
    return float(np.sum(loss_sums) / max(np.sum(token_counts), 1))


def majority_class(y_train: np.ndarray) -> int:
    """The most frequent training label (the lowest id on ties): the baseline any classifier must beat."""
    return int(np.argmax(np.bincount(np.asarray(y_train))))


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    confidence: float

    def excludes(self, x: float) -> bool:
        return not (self.low <= x <= self.high)

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "confidence": self.confidence}


def bootstrap(metric: Metric, *arrays: np.ndarray, resamples: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> Interval:
    """Percentile bootstrap over examples: resample rows with replacement, recompute the metric."""
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    stats = np.array([metric(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, size=(resamples, n))])
    alpha = (1.0 - confidence) / 2
    return Interval(metric(*arrays), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)),
                    confidence)


def paired_difference(metric: Metric, y_true: np.ndarray, pred_new: np.ndarray, pred_base: np.ndarray,
                      resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """CI of metric(new) - metric(base) on the same resampled examples (a paired bootstrap)."""

    def diff(y, a, b) -> float:
        return metric(y, a) - metric(y, b)

    return bootstrap(diff, y_true, pred_new, pred_base, resamples=resamples, confidence=confidence, seed=seed)
