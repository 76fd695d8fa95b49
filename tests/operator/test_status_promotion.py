"""status.promotion and the Promoted condition from the trainer's verdict: a rejected challenger is a finished run
(Succeeded, Ready, not Stalled) with Promoted=False and the gate's numbers; each verdict makes one event and one
count of the Prometheus counter."""
import json

import pytest

from kubetune.api import ConditionType, Reason
from kubetune.api.status import PromotionReason
from kubetune.operator import metrics, promote_job, runs
from kubetune.operator.status import compute_status
from tests.operator.test_children import ftj
from tests.operator.test_status import NOW, SUMMARY, error, k8s_job, pod

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


def promotion_job(job, *conditions, pods=()):
    """The promotion Job of `job`'s override, as the reconcile observed it (promote_job.Observed)."""
    name = promote_job.job_name(job, job.status.run_id)
    k8s = {"metadata": {"name": name, "uid": "uid-of-promotion"},
           "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": f"{t}: {r}"}
                                     for t, r in conditions]}}
    return promote_job.Observed(name, k8s, list(pods))


SEEN = {"action": "promote", "runId": "g1-0f1e2d3c", "requestedBy": "ann@example.com"}
CARRIED_OUT = {"destination": "s3://models/models/bot/", "championRunId": "g0-aaaa", "requestedBy": "ann@example.com",
               "verdict": "Overridden", "reason": "PromotedByOverride",
               "modelUri": "s3://models/models/bot/runs/g1-0f1e2d3c/model/", "replacedRunId": "g0-aaaa",
               "reasons": ["promoted by override: ann@example.com: answers read better on billing questions"],
               "override": SEEN}


def test_an_override_added_after_the_run_is_carried_out_by_its_promotion_job():
    """The run's trainer saw no override (its spec was fixed when it started): the operator's promotion Job carries
    out one added to the finished run. While it runs the Promoted condition says so (the run's verdict stands);
    its termination message becomes the verdict, with the condition, the event and the count a run's own get."""
    status, _ = finished(REJECTED)
    later = ftj(WITH_OVERRIDE, generation=2, status=status.to_wire())
    run = runs.current_run(later)
    assert run.run_id == status.run_id  # spec.promotion is not hashed: the same run
    again, events = compute_status(later, run, None, [], None, NOW)  # the plan makes the Job in this reconcile
    promoted = condition(again, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("False", PromotionReason.OVERRIDE_IN_PROGRESS)
    assert promote_job.job_name(later, run.run_id) in promoted.message and "g1-0f1e2d3c" in promoted.message
    assert "Rejected" in promoted.message and again.promotion.verdict == "Rejected"
    [event] = [e for e in events if e.reason == PromotionReason.OVERRIDE_IN_PROGRESS]
    assert event.type == "Normal"
    # Said once; the condition stays while the Job runs.
    later = ftj(WITH_OVERRIDE, generation=2, status=again.to_wire())
    third, events = compute_status(later, run, None, [], None, NOW, override_job=promotion_job(later))
    assert condition(third, ConditionType.PROMOTED) == promoted
    assert not [e for e in events if e.reason == PromotionReason.OVERRIDE_IN_PROGRESS]
    # Its pod's termination message: the verdict, as a run's own.
    before = metrics.PROMOTIONS.labels("team-a", "Overridden", "PromotedByOverride")._value.get()
    later = ftj(WITH_OVERRIDE, generation=2, status=third.to_wire())
    done = promotion_job(later, ("Complete", ""), pods=[pod("Succeeded", exit_code=0,
                                                             message=json.dumps({"promotion": CARRIED_OUT}))])
    fourth, events = compute_status(later, run, None, [], None, NOW, override_job=done)
    assert fourth.promotion.verdict == "Overridden" and fourth.promotion.requested_by == "ann@example.com"
    assert fourth.promotion.override.run_id == "g1-0f1e2d3c" and fourth.promotion.replaced_run_id == "g0-aaaa"
    promoted = condition(fourth, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("True", PromotionReason.OVERRIDDEN)
    [event] = [e for e in events if e.reason == PromotionReason.OVERRIDDEN]
    assert event.type == "Normal" and "by override (ann@example.com)" in event.message
    metrics.observe("team-a", "chat", third, fourth, None)
    # The next reconciles (the Job still there, then gone with its TTL) keep it and say nothing again.
    later = ftj(WITH_OVERRIDE, generation=2, status=fourth.to_wire())
    for observed in (done, None):
        fifth, events = compute_status(later, run, None, [], None, NOW, override_job=observed)
        assert fifth == fourth and not events
        metrics.observe("team-a", "chat", fourth, fifth, None)
    assert metrics.PROMOTIONS.labels("team-a", "Overridden", "PromotedByOverride")._value.get() == before + 1
    metrics.forget("team-a", "chat")
    # Taken out of the spec again: the verdict stays the override's.
    back = ftj(GATE, generation=3, status=fourth.to_wire())
    sixth, _ = compute_status(back, runs.current_run(back), None, [], None, NOW)
    assert condition(sixth, ConditionType.PROMOTED).reason == PromotionReason.OVERRIDDEN


def test_a_rollback_by_promotion_job_while_the_run_job_is_still_there():
    status, _ = finished(REJECTED)
    rollback = {**OVERRIDE, "action": "rollback", "runId": "g0-aaaa"}
    patch = {"spec": {**GATE["spec"], "promotion": {**GATE["spec"]["promotion"], "override": rollback}}}
    later = ftj(patch, generation=2, status=status.to_wire())
    outcome = {"destination": "s3://models/models/bot/", "requestedBy": "ann@example.com", "verdict": "RolledBack",
               "reason": "RolledBack", "championRunId": "g0-aaaa", "replacedRunId": "g9-bbbb",
               "modelUri": "s3://models/models/bot/runs/g0-aaaa/model/", "reasons": ["rolled back to g0-aaaa"],
               "override": {**SEEN, "action": "rollback", "runId": "g0-aaaa"}}
    done = promotion_job(later, ("Complete", ""), pods=[pod("Succeeded", exit_code=0,
                                                             message=json.dumps({"promotion": outcome}))])
    summary = dict(SUMMARY, promotion=REJECTED)
    again, events = compute_status(later, runs.current_run(later), k8s_job(("Complete", "")),
                                   [pod("Succeeded", exit_code=0, message=json.dumps(summary))], None, NOW,
                                   override_job=done)
    assert again.phase == "Succeeded" and again.promotion.verdict == "RolledBack"
    promoted = condition(again, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("False", PromotionReason.ROLLED_BACK)  # this run is not it
    [event] = [e for e in events if e.reason == PromotionReason.ROLLED_BACK]
    assert "rolled back to run g0-aaaa" in event.message and "replacing run g9-bbbb" in event.message


def test_a_failed_promotion_job_is_reported_with_its_pods_message_and_not_retried():
    status, _ = finished(REJECTED)
    later = ftj(WITH_OVERRIDE, generation=2, status=status.to_wire())
    run = runs.current_run(later)
    why = "spec.promotion.override: run g1-0f1e2d3c has no finished run at s3://artifacts/g1-0f1e2d3c/"
    failed = promotion_job(later, ("Failed", "PodFailurePolicy"), pods=[pod("Failed", exit_code=64,
                                                                            message=error("BadInput", why))])
    again, events = compute_status(later, run, None, [], None, NOW, override_job=failed)
    promoted = condition(again, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("False", PromotionReason.OVERRIDE_FAILED)
    assert promoted.message == promote_job.failed_message(failed.name, f"{Reason.BAD_INPUT}: {why}")
    assert again.promotion.verdict == "Rejected" and again.phase == "Succeeded"
    [event] = [e for e in events if e.reason == PromotionReason.OVERRIDE_FAILED]
    assert event.type == "Warning" and why in event.message
    # Once the Job's TTL removed it, the failure stays on the record, and plan.py makes no new Job for it.
    later = ftj(WITH_OVERRIDE, generation=2, status=again.to_wire())
    third, events = compute_status(later, run, None, [], None, NOW, override_job=promote_job.Observed(failed.name))
    assert condition(third, ConditionType.PROMOTED) == promoted and not events
    assert promote_job.wanted(later, run) is None
    # A refused create is reported the same way.
    later = ftj(WITH_OVERRIDE, generation=2, status=status.to_wire())
    refused = promote_job.Observed(failed.name, refused="the API server refused to create it: rule trainer-command")
    fourth, events = compute_status(later, run, None, [], None, NOW, override_job=refused)
    assert condition(fourth, ConditionType.PROMOTED).reason == PromotionReason.OVERRIDE_FAILED
    assert "rule trainer-command" in condition(fourth, ConditionType.PROMOTED).message


def test_an_override_left_by_an_earlier_operator_is_carried_out_now():
    status, _ = finished(REJECTED)
    wire = status.to_wire()
    promoted = next(c for c in wire["conditions"] if c["type"] == "Promoted")
    promoted.update(reason=PromotionReason.OVERRIDE_AFTER_RUN, message="run `kubetune override FILE`")
    later = ftj(WITH_OVERRIDE, generation=2, status=wire)
    again, _ = compute_status(later, runs.current_run(later), None, [], None, NOW)
    assert condition(again, ConditionType.PROMOTED).reason == PromotionReason.OVERRIDE_IN_PROGRESS


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
    assert condition(status, ConditionType.PROMOTED).reason == PromotionReason.OVERRIDE_IN_PROGRESS


def test_the_override_verdict_outlives_its_job_while_the_runs_job_stays():
    """A run Job without a TTL keeps the run's own verdict in its pod's termination message: once the promotion
    Job has gone, the override's verdict stays on the status, and nothing asks for the Job again."""
    status, _ = finished(REJECTED)
    later = ftj(WITH_OVERRIDE, generation=2, status=status.to_wire())
    run = runs.current_run(later)
    run_job = k8s_job(("Complete", ""))
    run_pods = [pod("Succeeded", exit_code=0, message=json.dumps(dict(SUMMARY, promotion=REJECTED)))]
    done = promotion_job(later, ("Complete", ""), pods=[pod("Succeeded", exit_code=0,
                                                             message=json.dumps({"promotion": CARRIED_OUT}))])
    again, _ = compute_status(later, run, run_job, run_pods, None, NOW, override_job=done)
    assert again.promotion.verdict == "Overridden"
    later = ftj(WITH_OVERRIDE, generation=2, status=again.to_wire())
    third, events = compute_status(later, run, run_job, run_pods, None, NOW,
                                   override_job=promote_job.Observed(done.name))
    assert third == again and not events
    assert condition(third, ConditionType.PROMOTED).reason == PromotionReason.OVERRIDDEN
    assert promote_job.wanted(ftj(WITH_OVERRIDE, generation=2, status=third.to_wire()), run) is None


def test_a_run_that_failed_with_the_override_in_its_spec_saw_it():
    """A stale override left in the spec (Git) is not carried out because a later run failed before its verdict:
    the status records the override the run's Job was given; one changed after the run started still is."""
    job = ftj(WITH_OVERRIDE)
    run = runs.current_run(job)
    started, _ = compute_status(job, run, k8s_job(), [pod("Running")], None, NOW)
    assert started.run_override == "promote g1-0f1e2d3c ann@example.com"
    job = ftj(WITH_OVERRIDE, status=started.to_wire())
    failed, _ = compute_status(job, run, k8s_job(("Failed", "BackoffLimitExceeded")),
                               [pod("Failed", exit_code=1, message=error("Error", "boom"))], None, NOW)
    assert failed.phase == "Failed" and failed.promotion is None
    assert failed.run_override == started.run_override
    promoted = condition(failed, ConditionType.PROMOTED)
    assert (promoted.status, promoted.reason) == ("False", PromotionReason.NO_VERDICT)
    assert promote_job.wanted(ftj(WITH_OVERRIDE, status=failed.to_wire()), run) is None
    # Changed after the run started: carried out.
    other = {"spec": {**GATE["spec"], "promotion": {**GATE["spec"]["promotion"], "override": {
        **OVERRIDE, "action": "rollback", "runId": "g0-aaaa"}}}}
    later = ftj(other, generation=2, status=failed.to_wire())
    assert promote_job.wanted(later, run) is not None
    again, _ = compute_status(later, run, None, [], None, NOW)
    assert condition(again, ConditionType.PROMOTED).reason == PromotionReason.OVERRIDE_IN_PROGRESS
    assert again.run_override == started.run_override  # still what the run was given
