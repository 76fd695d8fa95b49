"""The promotion gate on numbers: every criterion is judged on an interval, never on a point estimate."""
import pytest

from kubetune.api.spec import Promotion
from kubetune.api.status import PromotionReason
from kubetune.trainer import gate


def make_promotion(**overrides) -> Promotion:
    return Promotion.model_validate({"destination": "s3://models/bot/", **overrides})


def diff(value, low, high):
    return {"value": value, "low": low, "high": high, "excludesZero": not (low <= 0 <= high)}


@pytest.mark.parametrize("metric, d, passed", [
    ("loss", diff(-0.3, -0.5, -0.1), True),          # lower loss, interval wholly below zero
    ("loss", diff(-0.3, -0.5, 0.05), False),         # better point estimate, interval crosses zero
    ("loss", diff(0.2, 0.1, 0.3), False),            # worse
    ("exactMatch", diff(0.1, 0.02, 0.2), True),      # higher is better
    ("exactMatch", diff(0.1, -0.01, 0.2), False),
    ("exactMatch", diff(-0.1, -0.2, -0.02), False),
])
def test_base_model_comparison_is_judged_on_the_interval(metric, d, passed):
    v = gate.judge(make_promotion(), metric, {}, {metric: d}, None)
    assert v.passed is passed
    assert v.reason == (PromotionReason.PROMOTED if passed else PromotionReason.GATE_FAILED)
    if not passed:
        assert f"[{d['low']:+.4g}, {d['high']:+.4g}]" in v.reasons[0] and "does not beat the base model" in v.reasons[0]


def test_no_champion_yet_passes_beat_champion_vacuously():
    v = gate.judge(make_promotion(), "loss", {}, {"loss": diff(-1, -2, -0.5)}, None, champion_id=None)
    assert v.passed and [c["criterion"] for c in v.checks] == ["beatBaseModel"]


def test_a_champion_must_be_beaten_on_the_same_rows():
    base = {"loss": diff(-1, -2, -0.5)}
    lost = gate.judge(make_promotion(), "loss", {}, base, {"loss": diff(0.01, -0.02, 0.04)}, champion_id="bot-1")
    assert not lost.passed and lost.reason == PromotionReason.GATE_FAILED
    assert lost.reasons == ["does not beat champion bot-1 on test loss: difference +0.01, 95% interval "
                            "[-0.02, +0.04] (not wholly below zero)"]
    won = gate.judge(make_promotion(), "loss", {}, base, {"loss": diff(-0.1, -0.2, -0.01)}, champion_id="bot-1")
    assert won.passed and won.reason == PromotionReason.PROMOTED


def test_an_incomparable_champion_refuses_the_run_with_its_reason():
    why = gate.incomparable({"task": "causal-lm", "baseModel": "s3://m/other/"}, "s3://m/tiny/", None, "causal-lm")
    assert why == "it was fine-tuned from s3://m/other/, this run from s3://m/tiny/"
    v = gate.judge(make_promotion(), "loss", {}, {"loss": diff(-1, -2, -0.5)}, None, champion_id="bot-1",
                   incomparable=why)
    assert not v.passed and v.reason == PromotionReason.CHAMPION_INCOMPARABLE
    assert v.reasons == [f"champion bot-1 is not comparable: {why}"]
    assert gate.incomparable({"task": "causal-lm", "baseModel": "s3://m/tiny/"}, "s3://m/tiny/", None,
                             "causal-lm") is None
    assert "task sequence-classification" in gate.incomparable(
        {"task": "sequence-classification", "baseModel": "s3://m/tiny/"}, "s3://m/tiny/", None, "causal-lm")


def test_an_incomparable_champion_does_not_matter_when_not_asked_to_beat_it():
    v = gate.judge(make_promotion(beatChampion=False), "loss", {}, {"loss": diff(-1, -2, -0.5)}, None,
                   champion_id="bot-1", incomparable="another task")
    assert v.passed


@pytest.mark.parametrize("bound, passed", [
    ({"metric": "exactMatch", "min": 0.2}, True),    # interval [0.25, 0.35] wholly >= 0.2
    ({"metric": "exactMatch", "min": 0.3}, False),   # the point estimate passes, the interval does not
    ({"metric": "loss", "max": 1.5}, True),          # [1.1, 1.4]
    ({"metric": "loss", "max": 1.3}, False),
    ({"metric": "exactMatch", "min": 0.1, "max": 0.34}, False),
    ({"metric": "perplexity", "max": 10}, False),    # not reported
])
def test_bounds_are_judged_on_the_metric_interval(bound, passed):
    test = {"exactMatch": 0.3, "exactMatchLow": 0.25, "exactMatchHigh": 0.35, "loss": 1.25, "lossLow": 1.1,
            "lossHigh": 1.4}
    v = gate.judge(make_promotion(beatBaseModel=False, bounds=[bound]), "loss", test, None, None)
    assert v.passed is passed
    assert all(("is wholly" in c["message"]) == c["passed"] for c in v.checks if "threshold" in c)


def test_every_failed_criterion_is_reported_together():
    v = gate.judge(make_promotion(bounds=[{"metric": "loss", "max": 1.0}]), "loss",
                   {"loss": 1.25, "lossLow": 1.1, "lossHigh": 1.4}, {"loss": diff(0.1, 0.05, 0.2)},
                   {"loss": diff(0.1, 0.05, 0.2)}, champion_id="bot-1")
    assert not v.passed and len(v.reasons) == 3


def test_the_verdict_survives_the_termination_message_limit():
    import json

    from kubetune.trainer.__main__ import termination_message

    verdict = {"verdict": "Rejected", "reason": "GateFailed", "destination": "s3://models/bot/",
               "checks": [{"criterion": "min", "metric": "loss", "passed": False, "message": "x" * 900}] * 6,
               "reasons": ["y" * 300] * 3}
    outcome = {"runId": "g1-abc", "stopReason": "MaxStepsReached", "steps": 3, "test": {"loss": 1.0},
               "comparison": {"baseModel": {"description": "z" * 3000}}, "promotion": verdict}
    parsed = json.loads(termination_message(outcome))
    assert parsed["promotion"]["verdict"] == "Rejected" and parsed["promotion"]["reason"] == "GateFailed"
