"""Which trials of a sweep the data can tell apart from the best: a pure function of the trials' objectives and
their 95% test intervals.

The exact test between two trials is a paired bootstrap of their difference on the same test rows, which needs
both trials' per-row scores in one place; they exist only in each trial's trainer while it runs, and the operator
reads no artifacts. What each trial reports is the paired interval of (trial - base model), every trial against the
same base model on the same rows, or else its own bootstrap interval. Two such 95% intervals that do not overlap
show a real difference whatever the correlation between the trials (the standard deviation of a difference is at
most the sum of the two standard deviations), so non-overlap is a valid test; overlap is not proof of a tie, only
of too little evidence (docs/sweeps.md: why this is conservative, and the exact alternative).
"""
import math

from kubetune.api.sweep import Interval, Trial

BASELINE_TOLERANCE = 1e-6
"""Relative: two paired intervals share the base model's value up to evaluation noise across devices."""


def comparable(a: Trial, b: Trial) -> tuple[Interval, Interval] | None:
    """The two trials' intervals on one basis: paired with the same base model value when both have it, else
    their own bootstrap intervals; None when they have none in common."""
    ia, ib = a.interval, b.interval
    if ia is None or ib is None:
        return None
    if ia.basis == ib.basis == "pairedWithBaseModel" and ia.baseline is not None and ib.baseline is not None \
            and math.isclose(ia.baseline, ib.baseline, rel_tol=BASELINE_TOLERANCE, abs_tol=1e-12):
        return ia, ib
    own_a = ia if ia.basis != "pairedWithBaseModel" else a.own_interval
    own_b = ib if ib.basis != "pairedWithBaseModel" else b.own_interval
    return (own_a, own_b) if own_a is not None and own_b is not None else None


def apart(best: Interval, other: Interval, minimize: bool) -> bool:
    """The best's interval lies wholly on the better side of the other's."""
    return best.high < other.low if minimize else best.low > other.high


def rank(trials: list[Trial], minimize: bool) -> tuple[Trial | None, list[Trial]]:
    """The best trial and every trial with its rank and its indistinguishable_from_best mark set (copies, in the
    order given). Only succeeded trials with an objective are ranked; ties in value go to the earlier trial."""
    scored = sorted((t for t in trials if t.phase == "Succeeded" and t.objective is not None),
                    key=lambda t: (t.objective if minimize else -t.objective, t.number))
    if not scored:
        return None, [t.model_copy(update={"rank": None, "indistinguishable_from_best": None}) for t in trials]
    best = scored[0]
    marks: dict[int, tuple[int, bool | None]] = {}
    for place, trial in enumerate(scored, start=1):
        if trial is best:
            marks[trial.number] = (place, True if best.interval is not None else None)
            continue
        pair = comparable(best, trial)
        marks[trial.number] = (place, None if pair is None else not apart(*pair, minimize))
    out = []
    for t in trials:
        place, tied = marks.get(t.number, (None, None))
        out.append(t.model_copy(update={"rank": place, "indistinguishable_from_best": tied}))
    return next(t for t in out if t.number == best.number), out
