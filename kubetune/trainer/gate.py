"""The promotion gate, pure: from the test report's numbers to a verdict with its reasons.

Every criterion is judged on an interval, never on a point estimate: a comparison (against the base model, against
the destination's champion) holds when the 95% paired-bootstrap interval of the difference lies wholly on the better
side of zero; a floor holds when the metric's interval is wholly at or above it, a ceiling when wholly at or below.
Numbers in, verdict out: nothing here reads storage or models, so each rule is testable by hand.
"""
from dataclasses import dataclass, field

from kubetune.api.spec import MAXIMISED_METRICS, Promotion
from kubetune.api.status import PromotionReason


def higher_is_better(metric: str) -> bool:
    return metric in MAXIMISED_METRICS


def _fmt(x: float) -> str:
    return f"{x:+.4g}"


@dataclass
class Verdict:
    passed: bool
    reason: str
    """A PromotionReason: Promoted, GateFailed or ChampionIncomparable."""
    checks: list[dict] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    """Why, one line per failed criterion (or one saying every criterion held), with the numbers."""


def comparison_check(criterion: str, against: str, metric: str, difference: dict | None) -> dict:
    """One comparison: `difference` is evaluation.compare's entry for the metric ({value, low, high})."""
    if difference is None:
        return {"criterion": criterion, "metric": metric, "passed": False,
                "message": f"{criterion}: no paired {metric} difference against {against} was computed"}
    value, low, high = difference["value"], difference["low"], difference["high"]
    better = low > 0 if higher_is_better(metric) else high < 0
    side = "above" if higher_is_better(metric) else "below"
    verdict = "beats" if better else "does not beat"
    return {"criterion": criterion, "metric": metric, "passed": better, "value": value, "low": low, "high": high,
            "message": f"{verdict} {against} on test {metric}: difference {_fmt(value)}, 95% interval "
                       f"[{_fmt(low)}, {_fmt(high)}] ({'wholly' if better else 'not wholly'} {side} zero)"}


def bound_checks(promotion: Promotion, test: dict) -> list[dict]:
    """Floors and ceilings on the test metrics with intervals (evaluation.with_intervals: {m, mLow, mHigh})."""
    out = []
    for b in promotion.bounds:
        m = b.metric
        if m not in test:
            out.append({"criterion": "min" if b.min is not None else "max", "metric": m, "passed": False,
                        "message": f"bound on {m}: the run reports no test {m}"})
            continue
        value, low, high = test[m], test.get(f"{m}Low", test[m]), test.get(f"{m}High", test[m])
        for criterion, threshold, ok, word in (("min", b.min, low >= (b.min or 0), ">="),
                                              ("max", b.max, high <= (b.max or 0), "<=")):
            if threshold is None:
                continue
            out.append({"criterion": criterion, "metric": m, "passed": ok, "value": value, "low": low, "high": high,
                        "threshold": threshold,
                        "message": f"test {m} {value:.4g}, 95% interval [{low:.4g}, {high:.4g}] "
                                   f"{'is' if ok else 'is not'} wholly {word} {threshold:g}"})
    return out


def judge(promotion: Promotion, metric: str, test: dict, base: dict | None, champion: dict | None,
          champion_id: str | None = None, incomparable: str | None = None) -> Verdict:
    """The gate's verdict. `base` / `champion`: evaluation.compare's output against each (None: not scored);
    `champion_id`: the destination's champion (None: there is none yet, so beatChampion holds vacuously);
    `incomparable`: why that champion could not be scored against the run (another base model or task)."""
    checks = []
    if promotion.beat_base_model:
        checks.append(comparison_check("beatBaseModel", "the base model", metric, (base or {}).get(metric)))
    if promotion.beat_champion and champion_id is not None:
        if incomparable is not None:
            checks.append({"criterion": "beatChampion", "metric": metric, "passed": False,
                           "message": f"champion {champion_id} is not comparable: {incomparable}"})
        else:
            checks.append(comparison_check("beatChampion", f"champion {champion_id}", metric,
                                           (champion or {}).get(metric)))
    checks += bound_checks(promotion, test)
    failed = [c for c in checks if not c["passed"]]
    if not failed:
        return Verdict(True, PromotionReason.PROMOTED, checks,
                       [f"every criterion held ({len(checks)})" if checks else "the gate has no criteria"])
    reason = PromotionReason.CHAMPION_INCOMPARABLE if incomparable is not None and promotion.beat_champion \
        and champion_id is not None else PromotionReason.GATE_FAILED
    return Verdict(False, reason, checks, [c["message"] for c in failed])


def incomparable(champion: dict, base_model: str, revision: str | None, task: str) -> str | None:
    """Why the manifest's champion cannot be compared with a run of `base_model` on `task` (None: it can)."""
    if champion.get("task") != task:
        return f"it was trained for task {champion.get('task')}, this run for {task}"
    if champion.get("baseModel") != base_model or champion.get("baseModelRevision") != revision:
        theirs = champion.get("baseModel") + (f"@{champion['baseModelRevision']}"
                                               if champion.get("baseModelRevision") else "")
        ours = base_model + (f"@{revision}" if revision else "")
        return f"it was fine-tuned from {theirs}, this run from {ours}"
    return None
