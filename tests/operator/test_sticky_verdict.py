"""A verdict the operator declares itself (the kernel's OOM kill, an ephemeral-storage eviction) rests on a pod
that PodGC, a node deletion or a person may remove; the run stays Failed without it, and its Job stays held
(issue 20, item 7: a new trainer pod started within 30 s of the evidence going)."""
from kubetune.api import FineTuneJob, Reason
from kubetune.operator import runs
from kubetune.operator.plan import plan
from tests.operator.test_children import SETTINGS, ftj
from tests.operator.test_plan import observed_children, steps
from tests.operator.test_status import NOW, k8s_job, pod
from kubetune.operator.status import compute_status


def failed_by_oom(job: FineTuneJob) -> FineTuneJob:
    """The status the operator wrote when it saw the OOM-killed pod."""
    run = runs.current_run(job)
    held = k8s_job(suspend=False, failed=1)
    status, _ = compute_status(job, run, held, [pod("Failed", exit_code=137, reason="OOMKilled")], None, NOW)
    assert (status.phase, status.conditions[0].reason) == ("Failed", Reason.OOM_KILLED)
    return FineTuneJob.model_validate({**job.to_wire(), "status": status.to_wire()})


def test_the_run_stays_failed_when_its_oom_killed_pod_is_gone():
    job = failed_by_oom(ftj())
    run = runs.current_run(job)
    held = k8s_job(suspend=True, failed=1)  # the operator suspended the Job; then PodGC removed the pod
    status, events = compute_status(job, run, held, [], None, NOW)
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert (status.phase, failed.status, failed.reason) == ("Failed", "True", Reason.OOM_KILLED)
    assert status.completion_time == job.status.completion_time and not events


def test_a_held_job_is_never_released_once_the_evidence_is_gone():
    job = failed_by_oom(ftj())
    observed = observed_children(ftj(), suspend=None)
    observed["Job"][0]["spec"]["suspend"] = True
    assert steps(plan(job, observed, SETTINGS)) == []  # stays held: nothing unsuspends it
