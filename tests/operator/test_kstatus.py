"""The kstatus contract (issue 11 item 5): the statuses the operator computes, at each stage of a run, read
through kstatus' generic rules the way kstatus reads a batch Job: InProgress until the trainer started, Current
while it runs, is held or has finished, Failed through Stalled, InProgress while a spec edit is unobserved."""
import pytest

from kubetune.api import Reason
from kubetune.operator import runs
from kubetune.operator.status import State, compute_status
from tests.operator import kstatus
from tests.operator.test_children import ftj
from tests.operator.test_status import NOW, evicted, k8s_job, pod

STAGES = {
    # stage: (spec patch, Job, pods, problem, kstatus)
    "Job not created yet": ({}, None, [], None, "InProgress"),
    "pod pending": ({}, k8s_job(), [pod("Pending")], None, "InProgress"),
    "unschedulable": ({}, k8s_job(), [pod("Pending", unschedulable=True)], None, "InProgress"),
    "running": ({}, k8s_job(), [pod("Running")], None, "Current"),
    "restarting after a preemption": ({}, k8s_job(), [pod("Failed", exit_code=75), pod("Pending")], None, "Current"),
    "suspended": ({"spec": {"suspend": True}}, k8s_job(suspend=True), [], None, "Current"),
    "queued by Kueue": ({"spec": {"scheduling": {"queueName": "q"}}}, k8s_job(suspend=True), [], None, "Current"),
    "succeeded": ({}, k8s_job(("Complete", "")), [pod("Succeeded", exit_code=0)], None, "Current"),
    "failed": ({}, k8s_job(("Failed", "BackoffLimitExceeded")), [pod("Failed", exit_code=1)] * 2, None, "Failed"),
    "oom killed": ({}, k8s_job(), [pod("Failed", exit_code=137, reason="OOMKilled")], None, "Failed"),
    "disk outgrown": ({}, k8s_job(), [evicted("ephemeral local storage usage exceeds")], None, "Failed"),
    "refused by a quota": ({}, None, [], State("Pending", Reason.CHILD_FORBIDDEN, "exceeded quota", stalled=True),
                           "Failed"),
    "name taken": ({}, None, [], State("Pending", Reason.CHILD_CONFLICT, "Job x-g1 exists", stalled=True),
                   "Failed"),
}


def resource(job, status) -> dict:
    return {"kind": "FineTuneJob", "metadata": {"generation": job.metadata.generation}, "status": status.to_wire()}


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_reads_as_kstatus_reads_a_batch_job(stage):
    patch, k8s, pods, problem, expected = STAGES[stage]
    job = ftj(patch, generation=2)
    status, _ = compute_status(job, runs.current_run(job), k8s, pods, None, NOW, problem=problem)
    assert kstatus.compute(resource(job, status))[0] == expected


def test_an_unobserved_edit_is_in_progress_and_a_deletion_terminating():
    job = ftj(generation=1)
    status, _ = compute_status(job, runs.current_run(job), k8s_job(), [pod("Running")], None, NOW)
    assert kstatus.compute(resource(job, status))[0] == "Current"
    edited = resource(job, status)
    edited["metadata"]["generation"] = 2  # the spec changed; the operator has not written a status for it yet
    assert kstatus.compute(edited) == ("InProgress", "FineTuneJob generation is 2, but latest observed generation is 1")
    edited["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    assert kstatus.compute(edited)[0] == "Terminating"


def test_the_port_follows_upstream_precedence():
    # upstream checks Reconciling and Stalled in condition order; our statuses never set both True
    both = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": [
        {"type": "Stalled", "status": "True", "message": "m"}, {"type": "Reconciling", "status": "True"}]}}
    assert kstatus.compute(both)[0] == "Failed"
    assert kstatus.compute({"metadata": {"generation": 3}})[0] == "Current"  # no status at all


@pytest.mark.cluster
def test_kstatus_over_a_real_run(cluster, namespace, operator):
    """The same rules over what the operator writes on the API server, polled through a run and a failure."""
    from tests.operator.conftest import manifest, wait_for
    from tests.operator.test_operator_cluster import ftj as read, kwok

    seen: dict[str, set[str]] = {}

    def record(name):
        obj = read(cluster, namespace, name)
        phase = (obj.get("status") or {}).get("phase")
        if phase:
            seen.setdefault(f"{name}:{phase}", set()).add(kstatus.compute(obj)[0])
        return phase

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("k-ok", annotations=kwok(seconds=4)))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "k-bad", {"runPolicy": {"backoffLimit": 0}}, kwok(seconds=2, exit_code=1)))
    wait_for("both to end", lambda: record("k-ok") == "Succeeded" and record("k-bad") == "Failed",
             timeout=60, interval=0.1)
    assert seen["k-ok:Running"] == {"Current"} and seen["k-ok:Succeeded"] == {"Current"}
    assert seen["k-bad:Failed"] == {"Failed"}
    assert all(v == {"InProgress"} for k, v in seen.items() if k.endswith(":Pending")), seen
