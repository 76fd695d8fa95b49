"""What the status says when Kueue cannot admit a queued run at all (issue 20, item 8): never a silent "waiting
for admission" forever."""
from kubetune.api import Reason
from kubetune.operator import kueue, runs
from kubetune.operator.status import compute_status
from tests.operator.test_children import ftj
from tests.operator.test_status import NOW, k8s_job

QUEUED = {"spec": {"scheduling": {"queueName": "team-a"}}}


def queued_status(problem=None):
    job = ftj(QUEUED)
    return compute_status(job, runs.current_run(job), k8s_job(suspend=True), [], None, NOW,
                          kueue_problem=problem)


def reason_and_message(status) -> tuple[str, str]:
    suspended = next(c for c in status.conditions if c.type == "Suspended")
    return suspended.reason, suspended.message


def test_a_young_job_without_a_workload_waits_quietly():
    status, events = queued_status()
    assert reason_and_message(status) == (Reason.QUEUED, "waiting for admission by Kueue queue team-a")


def test_no_workload_within_the_bound_is_a_warning_naming_the_likely_causes():
    status, events = queued_status(kueue.missing("team-a", 61))
    reason, message = reason_and_message(status)
    assert status.phase == "Queued" and reason == Reason.NO_WORKLOAD
    assert "managedJobsNamespaceSelector" in message and "team-a" in message
    assert [(e.type, e.reason) for e in events] == [("Warning", Reason.NO_WORKLOAD)]


def test_workloads_the_api_server_does_not_serve_or_forbids_are_named_at_once():
    for status_code, reason, fragment in ((404, Reason.KUEUE_UNAVAILABLE, "Kueue is not installed"),
                                          (403, Reason.KUEUE_FORBIDDEN, "may not list Kueue Workloads")):
        status, events = queued_status(kueue.unavailable(status_code, "the server said no"))
        got, message = reason_and_message(status)
        assert got == reason and fragment in message and "the server said no" in message
        assert [(e.type, e.reason) for e in events] == [("Warning", reason)]


def test_a_suspended_queued_run_waits_without_a_job_kueue_could_admit():
    from tests.operator.test_children import SETTINGS
    from kubetune.operator.plan import plan
    job = ftj({"spec": {"suspend": True, "scheduling": {"queueName": "team-a"}}})
    p = plan(job, {}, SETTINGS)
    assert [(a.verb, a.kind) for a in p.actions] == [("create", "ConfigMap")]
    status, _ = compute_status(job, p.run, None, [], None, NOW)
    assert status.phase == "Suspended"
    resumed = ftj({"spec": {"scheduling": {"queueName": "team-a"}}}, generation=2)
    assert ("create", "Job") in [(a.verb, a.kind) for a in plan(resumed, {}, SETTINGS).actions]


def test_a_queued_run_is_looked_at_again_soon_while_young_then_at_the_resync_interval():
    reserved = {"status": {"conditions": [{"type": "QuotaReserved", "status": "True"}]}}
    assert kueue.look_again_seconds(None, 5, 60, 300) == 2.0  # Kueue has not said why yet
    assert kueue.look_again_seconds(reserved, 5, 60, 300) == 300  # it has: admission checks take their time
    assert kueue.look_again_seconds(None, 61, 60, 300) == 2.0  # just past NoWorkload's bound: say it now
    assert kueue.look_again_seconds(None, 600, 60, 300) == 300
