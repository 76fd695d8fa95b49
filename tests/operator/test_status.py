"""The status function, table-driven: every phase, condition and reason from observed Job and Pod states."""
import json
from datetime import datetime, timedelta, timezone

import pytest

from kubetune.api import ConditionType, Reason
from kubetune.operator import runs
from kubetune.operator.status import State, compute_status
from tests.operator.test_children import ftj

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
SUMMARY = {"runId": "g1-0f1e2d3c", "stopReason": "EarlyStopped", "steps": 60, "totalSteps": 100, "epochs": 1.2,
           "eval": {"loss": 1.25, "perplexity": 3.49}, "baseline": {"loss": 2.0}, "test": {"loss": 1.3},
           "best": {"name": "loss", "value": 1.2, "step": 40},
           "headline": [{"against": "baseModel", "metric": "loss", "baseline": 2.1, "fineTuned": 1.3, "difference": -0.8,
                         "low": -1.0, "high": -0.6, "excludesZero": True},
                        {"against": "baseModel", "metric": "loss", "baseline": "not a number"}],  # left out
           "artifacts": {"uri": "s3://artifacts/case/g1-0f1e2d3c", "modelUri": "s3://artifacts/case/g1-0f1e2d3c/model"}}


def k8s_job(*conditions: tuple[str, str], suspend: bool = False, **status) -> dict:
    return {"metadata": {"name": "chat-g1", "creationTimestamp": "2026-11-22T11:00:00Z"},
            "spec": {"suspend": suspend},
            "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": f"{t}: {r}"}
                                      for t, r in conditions], **status}}


def pod(phase: str, *, exit_code: int | None = None, reason: str | None = None, message: str = "",
        waiting: str | None = None, unschedulable: bool = False, start: str = "2026-11-22T11:01:00Z") -> dict:
    status: dict = {"phase": phase, "startTime": start, "podIP": "127.100.0.7"}
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "message": message}}}]
    if waiting:
        status["containerStatuses"] = [{"name": "trainer", "state": {"waiting": {"reason": waiting,
                                                                                 "message": "pull failed"}}}]
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]
    return {"metadata": {"name": "chat-g1-abcde", "creationTimestamp": "2026-11-22T11:00:30Z"}, "status": status}


def evicted(message: str) -> dict:
    p = pod("Failed")
    p["status"].update(reason="Evicted", message=message, conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}])
    return p


def error(reason: str, message: str) -> str:
    return json.dumps({"error": {"reason": reason, "message": message}})


CASES = {
    # name: (spec patch, Job, pods, expected phase, reason, message fragment)
    "no job yet": ({}, None, [], "Pending", Reason.CREATED, "creating"),
    "pod pending": ({}, k8s_job(), [pod("Pending")], "Pending", Reason.PENDING, "waiting"),
    "unschedulable": ({}, k8s_job(), [pod("Pending", unschedulable=True)], "Pending", Reason.UNSCHEDULABLE,
                      "Insufficient nvidia.com/gpu"),
    "image pull": ({}, k8s_job(), [pod("Pending", waiting="ImagePullBackOff")], "Pending",
                   Reason.IMAGE_PULL_BACK_OFF, "pull failed"),
    "missing secret": ({}, k8s_job(), [pod("Pending", waiting="CreateContainerConfigError")], "Pending",
                       "CreateContainerConfigError", "pull failed"),
    "running": ({}, k8s_job(), [pod("Running")], "Running", Reason.RUNNING, "training"),
    # the pod exited 0 before the Job controller declared the Job complete: still Running, not back to Pending
    "finishing": ({}, k8s_job(), [pod("Succeeded", exit_code=0)], "Running", Reason.RUNNING, "training"),
    "restarting": ({}, k8s_job(), [pod("Failed", exit_code=75, message=error("Preempted", "SIGTERM at step 9")),
                                  pod("Pending")], "Running", Reason.RESTARTING, "SIGTERM at step 9"),
    "suspended": ({"spec": {"suspend": True}}, k8s_job(suspend=True), [], "Suspended", Reason.SUSPENDED, "suspend"),
    "queued by kueue": ({"spec": {"scheduling": {"queueName": "team-a"}}}, k8s_job(suspend=True), [], "Queued",
                        Reason.QUEUED, "Kueue queue team-a"),
    "succeeded early stopped": ({}, k8s_job(("Complete", "")), [pod("Succeeded", exit_code=0,
                                                                    message=json.dumps(SUMMARY))],
                                "Succeeded", Reason.EARLY_STOPPED, "EarlyStopped after 60 steps"),
    "succeeded no message": ({}, k8s_job(("Complete", "")), [pod("Succeeded", exit_code=0)], "Succeeded",
                             Reason.COMPLETED, "finished"),
    "oom killed": ({}, k8s_job(("Failed", "PodFailurePolicy")), [pod("Failed", exit_code=137, reason="OOMKilled")],
                   "Failed", Reason.OOM_KILLED, "out of memory"),
    # fault 8: a kernel OOM kill fails the run even though the Job would retry it; any other SIGKILL is retried
    "oom killed, job retrying": ({}, k8s_job(), [pod("Failed", exit_code=137, reason="OOMKilled"), pod("Pending")],
                                 "Failed", Reason.OOM_KILLED, "out of memory"),
    "sigkill, not oom": ({}, k8s_job(), [pod("Failed", exit_code=137, reason="Error"), pod("Pending")],
                         "Running", Reason.RESTARTING, "exit code 137"),
    "evicted for ephemeral storage": ({}, k8s_job(), [evicted("Pod ephemeral local storage usage exceeds the "
                                                              "total limit of containers 20Gi.")],
                                      "Failed", Reason.EPHEMERAL_STORAGE_EXCEEDED, "exceeds the total limit"),
    # what the kubelet writes when the cache volume outgrows its sizeLimit (pkg/kubelet/eviction emptyDirMessageFmt):
    # the trainer's containers set no ephemeral-storage limit, so this is the eviction a real run gets
    "evicted, the cache outgrew its size limit": ({}, k8s_job(), [evicted('Usage of EmptyDir volume "cache" exceeds '
                                                                          'the limit "20Gi". ')],
                                                  "Failed", Reason.EPHEMERAL_STORAGE_EXCEEDED, 'volume "cache"'),
    "oom exit code": ({}, k8s_job(("Failed", "PodFailurePolicy")),
                      [pod("Failed", exit_code=65, message=error("OutOfMemory", "CUDA out of memory at step 3"))],
                      "Failed", Reason.OOM_KILLED, "CUDA out of memory"),
    "bad input": ({}, k8s_job(("Failed", "PodFailurePolicy")),
                  [pod("Failed", exit_code=64, message=error("BadInput", "train.jsonl line 7: not JSON"))],
                  "Failed", Reason.BAD_INPUT, "train.jsonl line 7"),
    # the Job controller deletes the pod at its deadline: the trainer checkpoints on SIGTERM and exits 75
    "deadline": ({}, k8s_job(("Failed", "DeadlineExceeded")),
                 [pod("Failed", exit_code=75, message=error("Preempted", "SIGTERM at step 9: checkpoint written"))],
                 "Failed", Reason.DEADLINE_EXCEEDED, "DeadlineExceeded"),
    "backoff limit": ({}, k8s_job(("Failed", "BackoffLimitExceeded")),
                      [pod("Failed", exit_code=75, message=error("Error", "S3 unreachable"))] * 4, "Failed",
                      Reason.BACKOFF_LIMIT_EXCEEDED, "S3 unreachable"),
}


@pytest.mark.parametrize("name", CASES)
def test_phase_reason_and_conditions(name):
    patch, job_obj, pods, phase, reason, fragment = CASES[name]
    job = ftj(patch, generation=3)
    status, events = compute_status(job, runs.current_run(job), job_obj, pods, None, NOW)
    assert (status.phase, status.observed_generation) == (phase, 3)
    conds = {c.type: c for c in status.conditions}
    assert all(c.observed_generation == 3 for c in conds.values())
    assert conds[ConditionType.READY].reason == reason and fragment in conds[ConditionType.READY].message
    truth = {t: c.status == "True" for t, c in conds.items()}
    assert truth == {"Ready": phase not in ("Pending", "Failed"), "Reconciling": phase == "Pending",
                     "Stalled": phase == "Failed", "Suspended": phase in ("Suspended", "Queued"),
                     "Running": phase == "Running", "Succeeded": phase == "Succeeded", "Failed": phase == "Failed"}
    # each condition its own reason: the run's where it holds (and on Ready), why not where it does not
    for c in conds.values():
        if c.status == "True" or c.type == ConditionType.READY:
            assert (c.reason, c.message) == (reason, conds[ConditionType.READY].message), c
        else:
            assert c.reason != reason and c.message != conds[ConditionType.READY].message, c
    if reason == Reason.PENDING:
        assert events == []  # the ordinary wait for a pod: JobCreated said it already
        return
    [event] = events
    assert event.reason == reason
    assert event.type == ("Warning" if phase == "Failed" or reason in (
        Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_BACK_OFF, Reason.RESTARTING) else "Normal")


def test_success_carries_the_trainer_summary():
    job = ftj()
    run = runs.current_run(job)
    status, _ = compute_status(job, run, k8s_job(("Complete", ""), completionTime="2026-11-22T11:30:00Z"),
                               [pod("Succeeded", exit_code=0, message=json.dumps(SUMMARY))], None, NOW)
    assert status.stop_reason == "EarlyStopped"
    assert (status.progress.step, status.progress.total_steps, status.progress.percent) == (60, 100, 100)
    assert status.metrics.eval_loss == 1.25 and status.metrics.baseline == {"loss": 2.0}
    assert (status.metrics.best.value, status.metrics.best.step) == (1.2, 40)
    [verdict] = status.metrics.comparisons
    assert (verdict.against, verdict.fine_tuned, verdict.low, verdict.excludes_zero) == ("baseModel", 1.3, -1.0, True)
    assert status.to_wire()["metrics"]["comparisons"][0]["fineTuned"] == 1.3  # camelCase on the wire
    assert status.artifacts.model_uri == SUMMARY["artifacts"]["modelUri"]
    assert status.completion_time == datetime(2026, 11, 22, 11, 30, tzinfo=timezone.utc)
    assert status.start_time == datetime(2026, 11, 22, 11, 1, tzinfo=timezone.utc)


def test_live_progress_from_the_trainer_metrics():
    job = ftj()
    sample = {"step": 25.0, "total_steps": 100.0, "epoch": 0.5, "train_loss": 1.9, "eval_loss": 2.1,
              "tokens_per_second": 5120.0, "eta_seconds": 300.0, "best": ("loss", 2.1)}
    status, _ = compute_status(job, runs.current_run(job), k8s_job(), [pod("Running")], sample, NOW)
    assert (status.progress.step, status.progress.percent, status.progress.eta_seconds) == (25, 25, 300)
    assert (status.metrics.train_loss, status.metrics.eval_loss, status.metrics.tokens_per_second) == (
        1.9, 2.1, 5120.0)
    # without a new sample (an event-driven reconcile) the last progress stays
    again = ftj(status=status.to_wire())
    status2, events = compute_status(again, runs.current_run(again), k8s_job(), [pod("Running")], None,
                                     NOW + timedelta(seconds=5))
    assert status2.progress == status.progress and events == []
    assert status2.to_wire() == status.to_wire()  # nothing changed: the operator writes nothing


def test_transition_time_moves_only_with_status():
    job = ftj()
    run = runs.current_run(job)
    pending, _ = compute_status(job, run, k8s_job(), [pod("Pending")], None, NOW)
    later = NOW + timedelta(minutes=2)
    running, events = compute_status(ftj(status=pending.to_wire()), run, k8s_job(), [pod("Running")], None, later)
    times = {c.type: c.last_transition_time for c in running.conditions}
    # Running and Reconciling changed (started: kstatus Current), Failed did not
    assert times["Running"] == later and times["Reconciling"] == later and times["Failed"] == NOW
    assert [e.reason for e in events] == [Reason.RUNNING]


def test_ttl_cleanup_keeps_the_outcome():
    job = ftj()
    run = runs.current_run(job)
    done, _ = compute_status(job, run, k8s_job(("Complete", "")), [pod("Succeeded", exit_code=0,
                                                                       message=json.dumps(SUMMARY))], None, NOW)
    after_ttl, events = compute_status(ftj(status=done.to_wire()), run, None, [], None, NOW + timedelta(hours=1))
    assert after_ttl == done and events == []


def test_spec_change_archives_the_run():
    job = ftj(generation=1)
    run = runs.current_run(job)
    running, _ = compute_status(job, run, k8s_job(), [pod("Running")], {"step": 5.0, "eval_loss": 2.5}, NOW)
    edited = ftj({"spec": {"hyperparameters": {"maxSteps": 50}}}, generation=2, status=running.to_wire())
    new_run = runs.current_run(edited)
    assert new_run.job_name == "chat-g2"
    status, events = compute_status(edited, new_run, None, [], None, NOW)
    assert status.run_id == new_run.run_id and status.progress is None and status.phase == "Pending"
    [record] = status.runs
    assert (record.generation, record.job_name, record.phase, record.reason) == (1, "chat-g1", "Running",
                                                                                 Reason.SPEC_CHANGED)
    assert record.eval_loss == 2.5 and record.artifacts_uri.endswith(run.run_id)
    assert [e.reason for e in events] == [Reason.SPEC_CHANGED, Reason.CREATED]


def test_restarts_count_pods_beyond_the_nodes():
    job = ftj()
    pods = [pod("Failed", exit_code=75), pod("Failed", exit_code=75), pod("Running")]
    status, _ = compute_status(job, runs.current_run(job), k8s_job(), pods, None, NOW)
    assert (status.attempts, status.restarts) == (3, 2)


def test_ttl_cleanup_then_an_in_place_edit_observes_the_new_generation():
    # fault 9: kstatus compares observedGeneration with generation; a finished, TTL-cleaned run must follow
    job = ftj(generation=1)
    run = runs.current_run(job)
    done, _ = compute_status(job, run, k8s_job(("Complete", "")), [pod("Succeeded", exit_code=0)], None, NOW)
    edited = ftj({"spec": {"runPolicy": {"ttlSecondsAfterFinished": 60}}}, generation=2, status=done.to_wire())
    after, events = compute_status(edited, runs.current_run(edited), None, [], None, NOW)
    assert after.phase == "Succeeded" and after.run_id == done.run_id and events == []
    assert after.observed_generation == 2 and {c.observed_generation for c in after.conditions} == {2}


def test_a_terminal_status_is_complete_in_one_write():
    # SuccessCriteriaMet comes before the Job's completionTime: the status still gets one
    job = ftj()
    status, _ = compute_status(job, runs.current_run(job), k8s_job(("SuccessCriteriaMet", "")),
                               [pod("Succeeded", exit_code=0)], None, NOW)
    assert status.phase == "Succeeded" and status.completion_time == NOW


def test_a_retried_refusal_is_reconciling_with_the_api_servers_message_never_stalled():
    """Stalled is for what will not change without a spec change (kstatus reads it as Failed); a quota refusal
    is retried and may clear up by itself."""
    job = ftj()
    problem = State("Pending", Reason.CHILD_FORBIDDEN, 'exceeded quota: q, requested: count/jobs.batch=1',
                    stalled=True)
    status, [event] = compute_status(job, runs.current_run(job), None, [], None, NOW, problem=problem)
    conds = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conds["Reconciling"] == ("True", Reason.CHILD_FORBIDDEN) and conds["Stalled"] == ("False", Reason.RETRYING)
    assert status.phase == "Pending" and "exceeded quota" in status.conditions[0].message
    assert event.type == "Warning"


def test_a_refusal_as_invalid_fails_and_stalls_the_run():
    job = ftj()
    problem = State("Failed", Reason.CHILD_REJECTED, "Job x-g1 is invalid: spec.affinity", stalled=True)
    status, [event] = compute_status(job, runs.current_run(job), None, [], None, NOW, problem=problem)
    conds = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conds["Stalled"] == conds["Failed"] == ("True", Reason.CHILD_REJECTED)
    assert conds["Reconciling"] == ("False", Reason.FINISHED) and event.type == "Warning"


def test_the_status_keeps_every_evaluation_the_trainer_served():
    """Each read brings the trainer's recent evaluations; the status keeps them by step, the newest
    EVAL_HISTORY_POINTS, and a finished run keeps its curve."""
    from kubetune.api import contract
    job = ftj()
    first = {"step": 45.0, "total_steps": 100.0, "eval_loss": 1.8, "eval_losses": [(20, 2.0), (40, 1.8)]}
    status, _ = compute_status(job, runs.current_run(job), k8s_job(), [pod("Running")], first, NOW)
    assert [(e.step, e.value) for e in status.metrics.eval_losses] == [(20, 2.0), (40, 1.8)]
    # a later read whose window no longer holds step 20 (a trainer serving its newest points only)
    later = {"step": 85.0, "total_steps": 100.0, "eval_loss": 1.5, "eval_losses": [(40, 1.8), (60, 1.6), (80, 1.5)]}
    again = ftj(status=status.to_wire())
    status, _ = compute_status(again, runs.current_run(again), k8s_job(), [pod("Running")], later, NOW)
    assert [e.step for e in status.metrics.eval_losses] == [20, 40, 60, 80]
    assert status.to_wire()["metrics"]["evalLosses"][-1] == {"step": 80, "value": 1.5}
    many = {"step": 9999.0, "eval_losses": [(s, 1.0) for s in range(100, 100 + 3 * contract.EVAL_HISTORY_POINTS)]}
    again = ftj(status=status.to_wire())
    status, _ = compute_status(again, runs.current_run(again), k8s_job(), [pod("Running")], many, NOW)
    assert len(status.metrics.eval_losses) == contract.EVAL_HISTORY_POINTS
    assert status.metrics.eval_losses[-1].step == 99 + 3 * contract.EVAL_HISTORY_POINTS
    done = ftj(status=status.to_wire())
    final, _ = compute_status(done, runs.current_run(done), k8s_job(("Complete", ""), completionTime=
                              "2026-11-22T11:30:00Z"), [pod("Succeeded", exit_code=0, message=json.dumps(SUMMARY))],
                              None, NOW)
    assert final.metrics.eval_losses == status.metrics.eval_losses
