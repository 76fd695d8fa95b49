"""What the status says about a run Kueue holds: Workload conditions -> phase, reason, message (pure)."""
from datetime import datetime, timezone

import pytest

from kubetune.operator import kueue, labels, status
from kubetune.operator.runs import current_run
from kubetune.operator.plan import plan
from tests.operator.test_children import SETTINGS, ftj
from tests.operator.test_plan import observed_children
from tests.operator.test_status import k8s_job


def workload(*conditions: tuple[str, str, str, str], active: bool | None = None) -> dict:
    wl = {"metadata": {"name": "job-q-1a2b3"}, "spec": {},
          "status": {"conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]}}
    if active is not None:
        wl["spec"]["active"] = active
    return wl


PENDING = ("QuotaReserved", "False", "Pending",
           "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor "
           "kwok-gpu, 8 more needed")
PREEMPTED = [("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: u2) due to prioritization"),
             ("Preempted", "True", "InClusterQueue", "Preempted to accommodate a workload (UID: u2)"),
             ("QuotaReserved", "False", "Pending", "")]


@pytest.mark.parametrize("wl, phase, reason, words", [
    (None, "Queued", "Queued", ["Kueue queue team-a"]),
    (workload(PENDING), "Queued", "Queued", ["queue team-a", "8 more needed"]),
    (workload(("QuotaReserved", "False", "Inadmissible", "LocalQueue team-a doesn't exist")),
     "Queued", "Inadmissible", ["LocalQueue team-a doesn't exist"]),
    (workload(*PREEMPTED), "Queued", "Preempted", ["evicted by Kueue", "prioritization", "queue team-a",
                                                   "last checkpoint"]),
    (workload(("Evicted", "True", "ClusterQueueStopped", "The ClusterQueue is stopped")),
     "Queued", "ClusterQueueStopped", ["ClusterQueue is stopped"]),
    (workload(("Evicted", "True", "Deactivated", "The workload is deactivated"), active=False),
     "Suspended", "Deactivated", ["deactivated", "queue team-a"]),
    (workload(("QuotaReserved", "True", "QuotaReserved", ""), ("Admitted", "False", "", "")),
     "Queued", "QuotaReserved", ["admission checks"]),
    (workload(("QuotaReserved", "True", "QuotaReserved", ""), ("Admitted", "True", "Admitted", "")),
     "Queued", "Admitted", ["starting"]),
    # readmitted after a preemption: Kueue clears Evicted, so the old reason does not stick
    (workload(("Evicted", "False", "Preempted", ""), ("Admitted", "True", "Admitted", "")),
     "Queued", "Admitted", ["starting"]),
])
def test_waiting_reads_the_workload(wl, phase, reason, words):
    got = kueue.waiting("team-a", wl)
    assert got[:2] == (phase, reason)
    for word in words:
        assert word in got[2], (word, got[2])


def test_the_status_of_a_preempted_run_says_queued_with_kueues_reason():
    job = ftj({"spec": {"scheduling": {"queueName": "team-a"}}})
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    st, events = status.compute_status(job, current_run(job), k8s_job(suspend=True), [], None, now,
                                       workload=workload(*PREEMPTED))
    assert st.phase == "Queued"
    ready = next(c for c in st.conditions if c.type == "Suspended")
    assert (ready.status, ready.reason) == ("True", "Preempted") and "queue team-a" in ready.message
    assert [e.reason for e in events] == ["Preempted"]


def test_spec_suspend_wins_over_the_workload():
    job = ftj({"spec": {"suspend": True, "scheduling": {"queueName": "team-a"}}})
    assert status.observe(job, k8s_job(suspend=True), [], None, workload(*PREEMPTED)).phase == "Suspended"


@pytest.mark.parametrize("suspend", [True, False])
def test_a_kueue_managed_job_is_never_suspended_or_resumed_by_the_operator(suspend):
    """Kueue starts the suspended Job of an admitted Workload, so suspending the Job would be a fight: spec.suspend
    deactivates the Workload and Kueue suspends the Job itself."""
    job = ftj({"spec": {"suspend": suspend, "scheduling": {"queueName": "team-a"}}})
    observed = observed_children(job)
    [child] = observed["Job"]
    child["spec"]["suspend"] = not suspend  # admitted and running / held by Kueue
    wl = workload()
    wl["metadata"]["labels"] = {labels.LABEL_KUEUE_JOB_UID: child["metadata"]["uid"]}
    p = plan(job, {**observed, "Workload": [wl]}, SETTINGS)
    assert not [a for a in p.actions if a.kind == "Job"], p.actions
    assert [(a.verb, a.kind, a.body) for a in p.actions if a.kind == "Workload"] == (
        [("patch", "Workload", kueue.activation(True, wl))] if suspend else [])
    # without Kueue (no Workload) the operator suspends the Job itself
    p = plan(job, observed, SETTINGS)
    assert [a.body for a in p.actions if a.kind == "Job"] == ([{"spec": {"suspend": True}}] if suspend else [])


OURS = {"name": "w", "annotations": {labels.ANNOTATION_DEACTIVATED: "true"}}


@pytest.mark.parametrize("suspend, wl, patch", [
    (True, workload(),
     {"metadata": {"annotations": {labels.ANNOTATION_DEACTIVATED: "true"}}, "spec": {"active": False}}),
    (True, workload(active=False), None),
    (False, workload(), None),
    (False, {**workload(active=False), "metadata": OURS},
     {"metadata": {"annotations": {labels.ANNOTATION_DEACTIVATED: None}}, "spec": {"active": True}}),
    # deactivated by Kueue itself (or by hand): not the operator's to undo
    (False, workload(active=False), None),
    (True, None, None),
])
def test_activation(suspend, wl, patch):
    assert kueue.activation(suspend, wl) == patch


def test_a_run_the_operator_failed_is_held_through_its_workload_when_kueue_manages_it():
    """The operator ends a kernel-OOM-killed run by holding its Job; Kueue would start an admitted suspended Job
    again, so a Job it manages is held by deactivating the Workload."""
    from kubetune.api import FineTuneJob
    from kubetune.api.status import FineTuneJobStatus

    job = ftj({"spec": {"scheduling": {"queueName": "team-a"}}})
    run = current_run(job)
    failed = FineTuneJob.model_validate({**job.to_wire(), "status": FineTuneJobStatus(
        phase="Failed", run_id=run.run_id, spec_hash=run.spec_hash, job_name=run.job_name).to_wire()})
    observed = observed_children(job)
    observed["Job"][0]["spec"]["suspend"] = False  # admitted
    wl = workload()
    wl["metadata"]["labels"] = {labels.LABEL_KUEUE_JOB_UID: observed["Job"][0]["metadata"]["uid"]}
    p = plan(failed, {**observed, "Workload": [wl]}, SETTINGS)
    assert [(a.verb, a.kind, a.body) for a in p.actions] == [("patch", "Workload", kueue.activation(True, wl))]
