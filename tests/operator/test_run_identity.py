"""The run's identity and attempt counter come from durable state (the Jobs' annotations and the status), never
from "attempt 1" when the indexes momentarily show no Job of the run (issue 20, item 3: two gangs of one run)."""
from kubetune.operator import children, labels, runs
from kubetune.operator.plan import plan
from tests.operator.test_children import SETTINGS, UID, ftj
from tests.operator.test_plan import MULTI_NODE, steps


def gang_status(attempt: int, failures: int, generation: int = 1, phase: str = "Running") -> dict:
    run_id = runs.current_run(ftj(MULTI_NODE, generation=generation)).run_id
    return {"observedGeneration": generation, "phase": phase, "runId": run_id,
            "specHash": runs.training_hash(ftj(MULTI_NODE)), "jobName": f"chat-g1-a{attempt}",
            "attempts": attempt, "restarts": attempt - 1, "failures": failures}


def test_a_gang_attempt_missing_from_the_index_is_recreated_not_restarted_at_attempt_1():
    # Attempt 3 (2 failures counted) runs; the index shows neither it nor its predecessors (a watch gap, or a
    # deletion applied before the matching creation). The status still says attempt 3.
    job = ftj(MULTI_NODE, status=gang_status(attempt=3, failures=2))
    p = plan(job, {}, SETTINGS)
    assert (p.run.job_name, p.run.attempt, p.run.failures) == ("chat-g1-a3", 3, 2)
    created = {a.kind: a for a in p.actions if a.verb == "create"}
    assert {a.name for a in created.values()} == {"chat-g1-a3"}
    annotations = created["Job"].body["metadata"]["annotations"]
    assert annotations[labels.ANNOTATION_ATTEMPT] == "3" and annotations[labels.ANNOTATION_FAILURES] == "2"


def test_the_attempt_counter_never_goes_down_when_the_index_lags_behind_the_status():
    # The index still holds attempt 2's Job (failed, stopped) while the status already moved on to attempt 3.
    job = ftj(MULTI_NODE, status=gang_status(attempt=3, failures=2))
    previous = children.build_job(job, runs.Run(1, job.status.run_id, job.status.spec_hash, "chat-g1-a2",
                                                    runs.template_hash(job), 2, 1), SETTINGS)
    previous["metadata"].update(uid="uid-a2", creationTimestamp="2026-11-22T11:00:00Z")
    previous["metadata"]["ownerReferences"][0]["uid"] = UID
    previous["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}
    p = plan(job, {"Job": [previous]}, SETTINGS)
    assert (p.run.attempt, p.run.failures) == (3, 2)
    assert ("delete", "Job", "chat-g1-a3") not in steps(p)


def test_a_new_generation_with_a_new_pod_template_still_names_a_new_job():
    # The status' Job is only reused while the status describes this generation: a NEW_JOB_FIELDS edit (the
    # image) keeps the run but replaces its Job, even when no Job is in the index.
    status = gang_status(attempt=1, failures=0) | {"jobName": "chat-g1"}
    job = ftj(MULTI_NODE | {"spec": {**MULTI_NODE["spec"], "image": "example.com/trainer:2"}}, generation=2,
              status=status)
    p = plan(job, {}, SETTINGS)
    assert p.run.run_id == status["runId"] and p.run.job_name == "chat-g2"


def test_a_progress_sample_read_from_a_replaced_job_is_not_the_current_runs():
    from kubetune.operator.reconcile import SAMPLE_JOB_UID, sample_for
    sample = {"step": 30, "train_loss": 1.5, SAMPLE_JOB_UID: "uid-of-chat-g1"}
    assert sample_for(sample, {"metadata": {"uid": "uid-of-chat-g1"}}) == sample
    assert sample_for(sample, {"metadata": {"uid": "uid-of-chat-g2"}}) is None  # replaced while it was read
    assert sample_for(sample, None) is None


def test_deletes_name_the_uid_they_observed():
    job = ftj(generation=2)
    old = children.build_job(ftj(generation=1), runs.current_run(ftj(generation=1)), SETTINGS)
    old["metadata"].update(uid="uid-of-old", creationTimestamp="2026-11-22T11:00:00Z")
    old["metadata"]["ownerReferences"][0]["uid"] = UID
    old["metadata"]["annotations"][labels.ANNOTATION_SPEC_HASH] = "another-run"
    p = plan(job, {"Job": [old]}, SETTINGS)
    [delete] = [a for a in p.actions if a.verb == "delete"]
    assert (delete.name, delete.uid) == ("chat-g1", "uid-of-old")

