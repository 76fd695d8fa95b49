"""The operator's fleet metrics, fed by the real status function and the real Job builder: failures by reason,
GPU-seconds of Running runs, one phase series per job."""
from datetime import datetime, timedelta

from prometheus_client import REGISTRY

from kubetune.operator import children, metrics, runs
from kubetune.operator.status import compute_status
from tests.operator.test_children import SETTINGS, ftj
from tests.operator.test_status import NOW, k8s_job, pod


def sample(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


class Clock:
    """metrics.datetime with `now` set by the test, so the GPU-seconds are exact."""
    at = NOW
    now = classmethod(lambda cls, tz=None: cls.at)
    fromisoformat = staticmethod(datetime.fromisoformat)


def step(job, child_status: dict | None, pods: list[dict], at):
    """One reconcile's observation: the status computed at `at`, then metrics.observe as reconcile.py calls it."""
    Clock.at = at
    run = runs.current_run(job)
    child = children.build_job(job, run, SETTINGS)
    child["metadata"]["creationTimestamp"] = "2026-11-22T11:00:00Z"
    if child_status is not None:
        child["status"] = child_status
    status, _ = compute_status(job, run, child, pods, None, at)
    metrics.observe(job.metadata.namespace, job.metadata.name, job.status, status, child)
    return job.model_copy(update={"status": status})


def test_gpu_seconds_failures_by_reason_and_phase_series(monkeypatch):
    job = ftj({"spec": {"resources": {"gpusPerNode": 2}, "nodes": 2,
                           "hyperparameters": {"batchSize": 16, "microBatchSize": 4}}})
    gpus_before = sample("kubetune_operator_gpu_seconds_total", namespace="team-a") or 0.0
    oom_before = sample("kubetune_operator_runs_finished_total", namespace="team-a", phase="Failed",
                        reason="OOMKilled") or 0.0
    monkeypatch.setattr(metrics, "datetime", Clock)
    job = step(job, {}, [pod("Running")], NOW)
    assert sample("kubetune_operator_finetunejob_phase", namespace="team-a", finetunejob="chat", phase="Running",
                  reason="Running") == 1
    assert sample("kubetune_operator_gpus_running", namespace="team-a") == 4  # 2 GPUs x 2 nodes
    job = step(job, {}, [pod("Running")], NOW + timedelta(seconds=30))
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "x"}],
              "completionTime": "2026-11-22T12:01:00Z"}
    job = step(job, failed, [pod("Failed", exit_code=137, reason="OOMKilled")], NOW + timedelta(seconds=90))
    # 4 GPUs x 60 s (Running from NOW to the completion time), not up to the later observation
    assert sample("kubetune_operator_gpu_seconds_total", namespace="team-a") - gpus_before == 240
    assert sample("kubetune_operator_runs_finished_total", namespace="team-a", phase="Failed",
                  reason="OOMKilled") - oom_before == 1
    assert sample("kubetune_operator_finetunejob_phase", namespace="team-a", finetunejob="chat", phase="Running",
                  reason="Running") is None  # the old phase's series is gone, not left at 1
    assert sample("kubetune_operator_finetunejob_phase", namespace="team-a", finetunejob="chat", phase="Failed",
                  reason="OOMKilled") == 1
    step(job, failed, [pod("Failed", exit_code=137, reason="OOMKilled")], NOW + timedelta(seconds=90))
    assert sample("kubetune_operator_runs_finished_total", namespace="team-a", phase="Failed",
                  reason="OOMKilled") - oom_before == 1  # a reconcile of a finished run counts nothing again
    assert not sample("kubetune_operator_gpus_running", namespace="team-a")
    metrics.forget("team-a", "chat")
    assert sample("kubetune_operator_finetunejob_phase", namespace="team-a", finetunejob="chat", phase="Failed",
                  reason="OOMKilled") is None


def test_queue_wait_counted_once_even_before_the_job_controller_writes_start_time(monkeypatch):
    monkeypatch.setattr(metrics, "datetime", Clock)
    count = lambda: sample("kubetune_operator_queue_wait_seconds_count") or 0.0  # noqa: E731
    total = lambda: sample("kubetune_operator_queue_wait_seconds_sum") or 0.0  # noqa: E731
    before, before_sum = count(), total()
    job = ftj({"spec": {"scheduling": {"queueName": "team-a"}}})
    job = step(job, {}, [], NOW)  # created suspended: Queued
    assert job.status.phase == "Queued"
    run = runs.current_run(job)
    admitted = children.build_job(job, run, SETTINGS)  # Kueue unsuspended it; no startTime written yet
    admitted["metadata"]["creationTimestamp"] = "2026-11-22T11:59:00Z"
    admitted["spec"]["suspend"] = False
    Clock.at = NOW + timedelta(seconds=30)
    status, _ = compute_status(job, run, admitted, [], None, Clock.at)
    metrics.observe("team-a", "chat", job.status, status, admitted)
    assert status.phase == "Pending" and count() - before == 1
    assert total() - before_sum == 90  # created 11:59:00, admitted at 12:00:30
    metrics.observe("team-a", "chat", status, status, admitted)
    assert count() - before == 1
    metrics.forget("team-a", "chat")


def test_transitions_counted_once_when_the_prior_status_is_stale(monkeypatch):
    """reconcile.py passes the status of the object it read, which may predate its own last status write."""
    monkeypatch.setattr(metrics, "datetime", Clock)
    finished = lambda: sample("kubetune_operator_runs_finished_total", namespace="team-a", phase="Failed",  # noqa: E731
                              reason="OOMKilled") or 0.0
    before = finished()
    job = step(ftj(), {}, [pod("Running")], NOW)
    stale = job.status
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "x"}],
              "completionTime": "2026-11-22T12:01:00Z"}
    job = step(job, failed, [pod("Failed", exit_code=137, reason="OOMKilled")], NOW + timedelta(seconds=60))
    assert finished() - before == 1
    # a reconcile that still sees the Running status as its prior: the run's failure is not counted again
    again = step(job.model_copy(update={"status": stale}), failed, [pod("Failed", exit_code=137, reason="OOMKilled")],
                 NOW + timedelta(seconds=70))
    assert again.status.phase == "Failed" and finished() - before == 1
    metrics.forget("team-a", "chat")
