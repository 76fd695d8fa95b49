"""status.promotion and the Promoted condition from the trainer's verdict: a rejected challenger is a finished run
(Succeeded, Ready, not Stalled) with Promoted=False and the gate's numbers; each verdict makes one event and one
count of the Prometheus counter."""
import json

import pytest

from kubetune.api import ConditionType
from kubetune.api.status import PromotionReason
from kubetune.operator import metrics, runs
from kubetune.operator.status import compute_status
from tests.operator.test_children import ftj
from tests.operator.test_status import NOW, SUMMARY, k8s_job, pod

GATE = {"spec": {"dataset": {"test": "s3://data/test.jsonl"}, "evaluation": {"baseline": True},
                 "promotion": {"destination": "s3://models/models/bot/"}}}
REJECTED = {"verdict": "Rejected", "reason": "GateFailed", "destination": "s3://models/models/bot/", "metric": "loss",
            "championRunId": "g0-aaaa", "checks": [
                {"criterion": "beatChampion", "metric": "loss", "passed": False, "value": 0.02, "low": -0.01,
                 "high": 0.05, "message": "does not beat champion g0-aaaa on test loss: difference +0.02, 95% "
                                          "interval [-0.01, +0.05] (not wholly below zero)"}],
            "reasons": ["does not beat champion g0-aaaa on test loss: difference +0.02, 95% interval [-0.01, +0.05] "
                        "(not wholly below zero)"]}
PROMOTED = {"verdict": "Promoted", "reason": "Promoted", "destination": "s3://models/models/bot/", "metric": "loss",
            "championRunId": "g0-aaaa", "replacedRunId": "g0-aaaa",
            "modelUri": "s3://models/models/bot/runs/g1-0f1e2d3c/model/", "checks": [],
            "reasons": ["every criterion held (2)"]}


def finished(verdict: dict | None, patch=GATE, status=None):
    job = ftj(patch, status=status)
    summary = dict(SUMMARY, **({"promotion": verdict} if verdict else {}))
    return compute_status(job, runs.current_run(job), k8s_job(("Complete", ""), completionTime="2026-11-22T11:30:00Z"),
                          [pod("Succeeded", exit_code=0, message=json.dumps(summary))], None, NOW)


def condition(status, kind):
    return next(c for c in status.conditions if c.type == kind)


def test_a_rejected_challenger_is_a_finished_run_with_promoted_false():
    status, events = finished(REJECTED)
    assert status.phase == "Succeeded"
    assert condition(status, ConditionType.READY).status == "True"
    assert condition(status, ConditionType.STALLED).status == "False"
    promoted = condition(status, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("False", PromotionReason.GATE_FAILED)
    assert "interval [-0.01, +0.05]" in promoted.message
    assert status.promotion.verdict == "Rejected" and status.promotion.champion_run_id == "g0-aaaa"
    assert status.to_wire()["promotion"]["checks"][0]["criterion"] == "beatChampion"
    [event] = [e for e in events if e.reason == PromotionReason.GATE_FAILED]
    assert event.type == "Warning" and "not promoted" in event.message and "[-0.01, +0.05]" in event.message


def test_a_promotion_holds_and_names_the_champion_it_replaced():
    status, events = finished(PROMOTED)
    promoted = condition(status, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("True", PromotionReason.PROMOTED)
    assert status.promotion.model_uri == PROMOTED["modelUri"] and status.promotion.replaced_run_id == "g0-aaaa"
    [event] = [e for e in events if e.reason == PromotionReason.PROMOTED]
    assert event.type == "Normal" and "replacing run g0-aaaa" in event.message
    # The next reconcile (the verdict already on the status) says nothing again, and keeps the condition.
    again, events = finished(PROMOTED, status=status.to_wire())
    assert not [e for e in events if e.reason == PromotionReason.PROMOTED]
    assert condition(again, ConditionType.PROMOTED).last_transition_time == promoted.last_transition_time


@pytest.mark.parametrize("verdict, holds, reason", [
    ({**PROMOTED, "verdict": "Overridden", "reason": "PromotedByOverride", "requestedBy": "ann"}, "True",
     PromotionReason.OVERRIDDEN),
    ({**REJECTED, "verdict": "Conflict", "reason": "PromotionConflict"}, "False", PromotionReason.LOST_RACE),
    ({**REJECTED, "reason": "ChampionIncomparable"}, "False", PromotionReason.CHAMPION_INCOMPARABLE),
    (None, "False", PromotionReason.NO_VERDICT),
])
def test_each_verdict_has_its_reason(verdict, holds, reason):
    status, _ = finished(verdict)
    assert status.phase == "Succeeded"
    promoted = condition(status, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == (holds, reason)


def test_no_promotion_spec_no_condition_and_a_running_run_is_unknown():
    status, _ = finished(PROMOTED, patch=None)
    assert status.promotion is None and ConditionType.PROMOTED not in {c.type for c in status.conditions}
    job = ftj(GATE)
    running, _ = compute_status(job, runs.current_run(job), k8s_job(), [pod("Running")], None, NOW)
    promoted = condition(running, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("Unknown", PromotionReason.PENDING)


def test_the_counter_counts_each_verdict_once():
    def count(verdict, reason):
        return metrics.PROMOTIONS.labels("team-a", verdict, reason)._value.get()

    before = count("Rejected", "GateFailed")
    status, _ = finished(REJECTED)
    metrics.observe("team-a", "chat", None, status, None)
    metrics.observe("team-a", "chat", status, status, None)
    assert count("Rejected", "GateFailed") == before + 1
    gauge = metrics.JOB_PROMOTION.labels("team-a", "chat", "Rejected", "GateFailed")._value.get()
    assert gauge == 1  # the series KubetuneChallengerRejected follows
    metrics.forget("team-a", "chat")
    assert ("team-a", "chat", "Rejected", "GateFailed") not in metrics.JOB_PROMOTION._metrics


OVERRIDE = {"action": "promote", "runId": "g1-0f1e2d3c", "requestedBy": "ann@example.com",
            "reason": "answers read better on billing questions"}
WITH_OVERRIDE = {"spec": {**GATE["spec"], "promotion": {**GATE["spec"]["promotion"], "override": OVERRIDE}}}


def test_an_override_added_after_the_run_says_it_needs_kubetune_override():
    """The run's trainer saw no override (its spec was fixed when it started); one added to a finished run is not
    carried out by the operator: the Promoted condition and a Warning event say so and name the command."""
    status, _ = finished(REJECTED)
    later = ftj(WITH_OVERRIDE, generation=2, status=status.to_wire())
    assert runs.current_run(later).run_id == status.run_id  # spec.promotion is not hashed: the same run
    again, events = compute_status(later, runs.current_run(later), None, [], None, NOW)
    promoted = condition(again, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("False", PromotionReason.OVERRIDE_AFTER_RUN)
    assert "kubetune override" in promoted.message and "g1-0f1e2d3c" in promoted.message
    assert "Rejected" in promoted.message and again.promotion.verdict == "Rejected"
    [event] = [e for e in events if e.reason == PromotionReason.OVERRIDE_AFTER_RUN]
    assert event.type == "Warning" and "kubetune override" in event.message
    # Said once; the condition stays while the override is in the spec.
    later = ftj(WITH_OVERRIDE, generation=2, status=again.to_wire())
    third, events = compute_status(later, runs.current_run(later), None, [], None, NOW)
    assert condition(third, ConditionType.PROMOTED).reason == PromotionReason.OVERRIDE_AFTER_RUN
    assert not [e for e in events if e.reason == PromotionReason.OVERRIDE_AFTER_RUN]
    # Taken out of the spec again: the run's own verdict's reason comes back.
    back = ftj(GATE, generation=3, status=third.to_wire())
    fourth, _ = compute_status(back, runs.current_run(back), None, [], None, NOW)
    assert condition(fourth, ConditionType.PROMOTED).reason == PromotionReason.GATE_FAILED


def test_an_override_the_run_saw_is_its_verdict():
    seen = {"action": "promote", "runId": "g1-0f1e2d3c", "requestedBy": "ann@example.com"}
    overridden = {**PROMOTED, "verdict": "Overridden", "reason": "PromotedByOverride",
                  "requestedBy": "ann@example.com", "override": seen}
    status, events = finished(overridden, patch=WITH_OVERRIDE)
    promoted = condition(status, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("True", PromotionReason.OVERRIDDEN)
    assert status.promotion.override.run_id == "g1-0f1e2d3c"
    assert not [e for e in events if e.reason == PromotionReason.OVERRIDE_AFTER_RUN]
    # An override for another run, seen by this one (not applicable to it), is its verdict too.
    other = {**REJECTED, "override": {**seen, "runId": "g0-aaaa"},
             "reasons": ["override for run g0-aaaa does not apply to this run (g1-0f1e2d3c)"]}
    status, _ = finished(other, patch={"spec": {**GATE["spec"], "promotion": {
        **GATE["spec"]["promotion"], "override": {**OVERRIDE, "runId": "g0-aaaa"}}}})
    assert condition(status, ConditionType.PROMOTED).reason == PromotionReason.GATE_FAILED
    # ...but a changed override (another run named) is one the run did not see.
    status, _ = finished(other, patch=WITH_OVERRIDE)
    assert condition(status, ConditionType.PROMOTED).reason == PromotionReason.OVERRIDE_AFTER_RUN
