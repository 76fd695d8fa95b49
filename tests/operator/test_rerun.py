"""spec.rerunToken: a run that failed after its retries is run again, as a new attempt of the same run, by changing
only the token (issue 25), pure parts: plan and status (test_rerun_cluster.py has the operator on the cluster)."""
import pytest

from kubetune.api import FineTuneJob, Reason
from kubetune.api.identity import hashed_wire
from kubetune.api.status import FineTuneJobStatus
from kubetune.operator import runs
from kubetune.operator.labels import ANNOTATION_ATTEMPT, ANNOTATION_RESTART_REASON
from kubetune.operator.plan import plan
from kubetune.operator.status import compute_status
from tests.operator.test_children import SETTINGS, ftj
from tests.operator.test_plan import observed_children, steps
from tests.operator.test_status import NOW, pod

FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]


def failed(token: str | None = None, honoured: str | None = None, generation: int = 2, phase: str = "Failed",
           job_name: str = "chat-g1") -> FineTuneJob:
    """The FineTuneJob whose run g1 ended `phase` (status written at generation 1), now with `token` in its spec."""
    first = ftj()
    run = runs.current_run(first)
    status = FineTuneJobStatus(observed_generation=1, phase=phase, run_id=run.run_id, spec_hash=run.spec_hash,
                               job_name=job_name, attempts=3, restarts=2, failures=3, rerun_token=honoured)
    patch = {"spec": {"rerunToken": token}} if token is not None else None
    return FineTuneJob.model_validate({**ftj(patch, generation=generation).to_wire(), "status": status.to_wire()})


def test_a_failed_run_is_rerun_by_a_new_token_only():
    job = failed("again-1")
    p = plan(job, observed_children(ftj(), conditions=FAILED), SETTINGS)
    # the same run (its id, hence its checkpoints), attempt 2 on a new Job; the ended attempt's children go
    assert p.run.run_id == runs.current_run(ftj()).run_id and p.run.attempt == 2
    assert steps(p) == [("delete", "Job", "chat-g1"), ("delete", "ConfigMap", "chat-g1"),
                        ("create", "ConfigMap", "chat-g1-a2"), ("create", "Job", "chat-g1-a2")]
    created = p.actions[-1].body
    assert created["metadata"]["annotations"][ANNOTATION_ATTEMPT] == "2"
    assert "again-1" in created["metadata"]["annotations"][ANNOTATION_RESTART_REASON]
    env = {e["name"]: e.get("value") for e in created["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_RUN_ID"] == p.run.run_id


@pytest.mark.parametrize("token, honoured", [(None, None), ("again-1", "again-1"), ("", "again-1")])
def test_no_new_token_no_rerun(token, honoured):
    """The token already honoured (re-applied, or an operator restarted), or none (cleared: not a request)."""
    job = failed(token, honoured)
    p = plan(job, observed_children(ftj(), conditions=FAILED), SETTINGS)
    assert steps(p) == [] and p.run.job_name == "chat-g1"


def test_the_token_is_no_training_field():
    assert runs.training_hash(failed("x")) == runs.training_hash(ftj())
    assert runs.template_hash(failed("x")) == runs.template_hash(ftj())
    assert "rerunToken" not in hashed_wire(failed("x").spec)


def test_the_rerun_status_is_the_same_run_restarting_with_the_token_recorded():
    job = failed("again-1")
    p = plan(job, observed_children(ftj(), conditions=FAILED), SETTINGS)
    child = {**p.actions[-1].body, "status": {}}
    status, events = compute_status(job, p.run, child, [], None, NOW)
    assert (status.run_id, status.job_name, status.rerun_token) == (job.status.run_id, "chat-g1-a2", "again-1")
    assert status.phase == "Running" and status.completion_time is None
    assert (status.attempts, status.failures) == (0, 0)  # the new Job's own: counted afresh, as its backoffLimit is
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert ready.reason == Reason.RESTARTING and "again-1" in ready.message
    assert Reason.RERUN in [e.reason for e in events]
    # the next reconcile, from the status written: the same attempt, nothing more to do
    again = FineTuneJob.model_validate({**job.to_wire(), "status": status.to_wire()})
    observed = {"Job": [{**child, "metadata": {**child["metadata"], "uid": "uid-2",
                                               "creationTimestamp": "2026-11-22T12:00:00Z"}}]}
    observed["Job"] += observed_children(ftj(), kinds=("Job",), conditions=FAILED)["Job"]
    again_plan = plan(again, observed, SETTINGS)
    assert again_plan.run.job_name == "chat-g1-a2"
    assert ("create", "Job", "chat-g1-a2") not in steps(again_plan)
    running, _ = compute_status(again, again_plan.run, observed["Job"][0], [pod("Running")], None, NOW)
    assert (running.phase, running.attempts, running.rerun_token) == ("Running", 1, "again-1")


def test_a_crash_before_the_status_write_adopts_the_rerun_job():
    job = failed("again-1")
    p = plan(job, observed_children(ftj(), conditions=FAILED), SETTINGS)
    rerun_job = {**p.actions[-1].body, "status": {}}
    rerun_job["metadata"] = {**rerun_job["metadata"], "uid": "uid-2", "creationTimestamp": "2026-11-22T12:00:00Z"}
    observed = observed_children(ftj(), conditions=FAILED)
    observed["Job"].append(rerun_job)
    again = plan(job, observed, SETTINGS)  # the status still says Failed with no token honoured
    assert again.run.job_name == "chat-g1-a2" and again.child is rerun_job
    assert ("create", "Job", "chat-g1-a2") not in steps(again)


def test_a_second_rerun_is_the_third_attempt_even_after_the_ttl_took_the_job():
    job = failed("again-2", honoured="again-1", generation=3, job_name="chat-g1-a2")
    p = plan(job, {}, SETTINGS)
    assert p.run.job_name == "chat-g1-a3" and p.run.attempt == 3


@pytest.mark.parametrize("phase", ["Succeeded", "Running"])
def test_a_token_change_on_a_run_that_has_not_failed_is_recorded_and_declined(phase):
    job = failed("again-1", phase=phase)
    conditions = [{"type": "Complete", "status": "True"}] if phase == "Succeeded" else []
    p = plan(job, observed_children(ftj(), conditions=conditions), SETTINGS)
    assert not [a for a in p.actions if a.verb == "create"] and p.run.job_name == "chat-g1"
    status, events = compute_status(job, p.run, p.child, [pod("Running")] if phase == "Running" else [], None, NOW)
    assert status.rerun_token == "again-1" and status.phase == phase
    ignored = [e for e in events if e.reason == Reason.RERUN_IGNORED]
    assert ignored and "again-1" in ignored[0].message


def test_a_new_object_with_a_token_records_it_without_an_event():
    job = ftj({"spec": {"rerunToken": "first"}})
    p = plan(job, {}, SETTINGS)
    assert p.run.job_name == "chat-g1"
    status, events = compute_status(job, p.run, None, [], None, NOW)
    assert status.rerun_token == "first" and Reason.RERUN_IGNORED not in [e.reason for e in events]


def test_a_token_on_a_success_whose_job_the_ttl_removed_is_declined_too():
    job = failed("again-1", phase="Succeeded")
    p = plan(job, {}, SETTINGS)
    assert steps(p) == [] and p.child is None
    status, events = compute_status(job, p.run, None, [], None, NOW)
    assert (status.phase, status.rerun_token, status.observed_generation) == ("Succeeded", "again-1", 2)
    assert [e.reason for e in events] == [Reason.RERUN_IGNORED]


def test_a_failed_gang_reruns_as_its_next_attempt_with_no_failures_counted():
    from kubetune.operator import children
    from kubetune.operator.labels import ANNOTATION_FAILURES
    from tests.operator.test_plan import MULTI_NODE

    gang = ftj(MULTI_NODE)
    run = runs.Run(1, runs.current_run(gang).run_id, runs.training_hash(gang), "chat-g1-a3",
                   runs.template_hash(gang), attempt=3, failures=4)
    ended = {**children.build_job(gang, run, SETTINGS), "status": {"conditions": FAILED}}
    ended["metadata"].update(uid="uid-a3", creationTimestamp="2026-11-22T11:00:00Z")
    status = FineTuneJobStatus(observed_generation=1, phase="Failed", run_id=run.run_id, spec_hash=run.spec_hash,
                               job_name="chat-g1-a3", attempts=3, failures=4)
    job = FineTuneJob.model_validate({**ftj({**MULTI_NODE, "spec": {**MULTI_NODE["spec"], "rerunToken": "r"}},
                                            generation=2).to_wire(), "status": status.to_wire()})
    p = plan(job, {"Job": [ended]}, SETTINGS)
    created = next(a.body for a in p.actions if a.verb == "create" and a.kind == "Job")
    assert created["metadata"]["name"] == "chat-g1-a4" and p.run.run_id == run.run_id
    assert (created["metadata"]["annotations"][ANNOTATION_ATTEMPT],
            created["metadata"]["annotations"][ANNOTATION_FAILURES]) == ("4", "0")
    assert ("create", "Service", "chat-g1-a4") in steps(p)
    st, _ = compute_status(job, p.run, {**created, "status": {}}, [], None, NOW)
    assert (st.attempts, st.failures, st.phase) == (4, 0, "Running")


def test_a_rerun_the_api_server_refuses_is_recorded_not_asked_again():
    from kubetune.operator.status import State

    job = failed("again-1")
    p = plan(job, observed_children(ftj(), conditions=FAILED), SETTINGS)
    refused = State("Failed", Reason.CHILD_REJECTED, "the API server refused to create Job chat-g1-a2", stalled=True)
    status, _ = compute_status(job, p.run, None, [], None, NOW, problem=refused)
    assert (status.phase, status.job_name, status.rerun_token) == ("Failed", "chat-g1-a2", "again-1")
    again = FineTuneJob.model_validate({**job.to_wire(), "status": status.to_wire()})
    assert not runs.rerun_asked(again, runs.current_run(again))  # no attempt 3, 4... on every reconcile
