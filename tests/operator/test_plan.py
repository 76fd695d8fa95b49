"""plan(): the actions that make a FineTuneJob's children match it, on plain dicts (faults 1-3 and 9 of issue 15)."""
from kubetune.api import FineTuneJob
from kubetune.api.status import FineTuneJobStatus
from kubetune.operator import children, runs
from kubetune.operator.plan import plan
from tests.api.cases import make_job
from tests.operator.test_children import SETTINGS, UID, ftj

OTHER_UID = "11111111-2222-3333-4444-555555555555"
MULTI_NODE = {"spec": {"nodes": 2, "resources": {"gpusPerNode": 8},
                       "hyperparameters": {"batchSize": 64, "microBatchSize": 4}}}


def observed_children(job: FineTuneJob, *, generation_of_run: FineTuneJob | None = None, kinds=("ConfigMap", "Job"),
                      uid: str | None = UID, **job_status) -> dict[str, list[dict]]:
    """The children as the API server would return them for `generation_of_run` (default: `job`)."""
    source = generation_of_run or job
    run = runs.current_run(source)
    objects = [*children.build_dependents(source, run, SETTINGS), children.build_job(source, run, SETTINGS)]
    out: dict[str, list[dict]] = {}
    for obj in objects:
        if obj["kind"] not in kinds:
            continue
        obj["metadata"]["uid"] = f"uid-of-{obj['kind']}"
        obj["metadata"]["creationTimestamp"] = "2026-11-22T11:00:00Z"
        if uid is None:
            obj["metadata"].pop("ownerReferences")  # kubectl delete --cascade=orphan removes them
        else:
            obj["metadata"]["ownerReferences"][0]["uid"] = uid
        if obj["kind"] == "Job":
            obj["status"] = job_status
        out.setdefault(obj["kind"], []).append(obj)
    return out


def steps(p) -> list[tuple[str, str, str]]:
    return [(a.verb, a.kind, a.name) for a in p.actions]


def test_a_new_run_creates_dependents_before_the_job():
    assert steps(plan(ftj(), {}, SETTINGS)) == [("create", "ConfigMap", "chat-g1"), ("create", "Job", "chat-g1")]
    assert steps(plan(ftj(MULTI_NODE), {}, SETTINGS)) == [
        ("create", "ConfigMap", "chat-g1"), ("create", "Service", "chat-g1"), ("create", "Job", "chat-g1")]


def test_every_missing_child_is_reasserted_on_every_reconcile():
    job = ftj()
    # fault 1: the ConfigMap create failed (or someone deleted it) after the Job was made
    p = plan(job, observed_children(job, kinds=("Job",)), SETTINGS)
    assert steps(p) == [("create", "ConfigMap", "chat-g1")]
    assert p.child["metadata"]["name"] == "chat-g1"
    assert steps(plan(job, observed_children(job), SETTINGS)) == []  # all there: nothing to do


def test_a_finished_job_gets_no_dependents_back_and_only_its_ttl_patched():
    job = ftj({"spec": {"suspend": True, "runPolicy": {"ttlSecondsAfterFinished": 60}}})
    for condition in ("Complete", "SuccessCriteriaMet", "FailureTarget"):
        done = observed_children(ftj(), kinds=("Job",), conditions=[{"type": condition, "status": "True"}])
        p = plan(job, done, SETTINGS)
        assert steps(p) == [("patch", "Job", "chat-g1")]
        assert p.actions[0].body == {"spec": {"ttlSecondsAfterFinished": 60}}


def test_a_child_controlled_by_someone_else_is_a_conflict_never_adopted():
    job = ftj()
    for uid in (OTHER_UID, None):  # another FineTuneJob instance's, or orphaned by --cascade=orphan
        p = plan(job, observed_children(job, uid=uid, conditions=[{"type": "Complete", "status": "True"}]),
                 SETTINGS)
        assert p.child is None and steps(p) == []
        assert p.conflict.startswith("Job chat-g1 already exists and is not controlled by this FineTuneJob")
        assert UID in p.conflict


def test_after_a_crash_the_owned_job_is_adopted_by_its_spec_hash():
    # fault 3: the Job was created, the status write was lost, then suspend was edited (generation 2)
    before = ftj(generation=1)
    edited = ftj({"spec": {"suspend": True}}, generation=2)
    p = plan(edited, observed_children(edited, generation_of_run=before), SETTINGS)
    assert p.run.job_name == "chat-g1" and p.run.run_id == runs.current_run(before).run_id
    assert steps(p) == [("patch", "Job", "chat-g1")]
    assert p.actions[0].body == {"spec": {"suspend": True}}


def test_a_training_edit_replaces_the_run_and_removes_the_old_children():
    before = ftj(generation=1)
    edited = ftj({"spec": {"hyperparameters": {"maxSteps": 99}}}, generation=2)
    p = plan(edited, observed_children(edited, generation_of_run=before), SETTINGS)
    assert steps(p) == [("delete", "Job", "chat-g1"), ("delete", "ConfigMap", "chat-g1"),
                        ("create", "ConfigMap", "chat-g2"), ("create", "Job", "chat-g2")]


def test_after_ttl_cleanup_the_finished_run_stays_finished_and_its_dependents_go():
    job = ftj()
    run = runs.current_run(job)
    done = FineTuneJob.model_validate({**job.to_wire(), "status": FineTuneJobStatus(
        phase="Succeeded", run_id=run.run_id, spec_hash=run.spec_hash, job_name=run.job_name).to_wire()})
    p = plan(done, observed_children(job, kinds=("ConfigMap",)), SETTINGS)
    assert steps(p) == [("delete", "ConfigMap", "chat-g1")]
    assert steps(plan(done, {}, SETTINGS)) == []


def test_a_terminating_child_is_waited_for():
    job = ftj()
    seen = observed_children(job)
    seen["Job"][0]["metadata"]["deletionTimestamp"] = "2026-11-22T11:00:05Z"
    p = plan(job, seen, SETTINGS)
    assert p.waiting == "Job chat-g1 is being deleted" and steps(p) == []


def test_children_of_another_finetunejob_with_the_label_are_left_alone():
    job = ftj()
    other = observed_children(FineTuneJob.model_validate({**make_job(name="chat"), "metadata": {
        "name": "chat", "namespace": "team-a", "uid": OTHER_UID, "generation": 7}}), uid=OTHER_UID)
    assert steps(plan(job, other, SETTINGS)) == [("create", "ConfigMap", "chat-g1"), ("create", "Job", "chat-g1")]


def test_a_run_the_operator_ended_keeps_its_job_suspended():
    # fault 8: the status says Failed (OOMKilled) while the Job, blind to the reason, would retry
    job = ftj()
    run = runs.current_run(job)
    failed = FineTuneJob.model_validate({**job.to_wire(), "status": FineTuneJobStatus(
        phase="Failed", run_id=run.run_id, spec_hash=run.spec_hash, job_name=run.job_name).to_wire()})
    p = plan(failed, observed_children(job), SETTINGS)
    assert steps(p) == [("patch", "Job", "chat-g1")] and p.actions[0].body == {"spec": {"suspend": True}}


def test_a_new_pod_template_replaces_the_job_only_after_its_pods_stopped():
    # fault 10: an image bump keeps the run (same run id: it resumes from its checkpoint) in a new Job
    before = ftj(generation=1)
    bumped = ftj({"spec": {"image": "registry.example/trainer:2"}}, generation=3)
    seen = observed_children(bumped, generation_of_run=before)
    p = plan(bumped, seen, SETTINGS)
    assert p.run.run_id == runs.current_run(before).run_id and p.run.job_name == "chat-g3"
    assert steps(p) == [("delete", "Job", "chat-g1"), ("delete", "ConfigMap", "chat-g1")]
    assert p.actions[0].propagation == "Foreground" and p.waiting.startswith("Job chat-g1 of this run")
    seen["Job"][0]["metadata"]["deletionTimestamp"] = "2026-11-22T11:00:05Z"  # its pods are checkpointing
    p = plan(bumped, {"Job": seen["Job"]}, SETTINGS)
    assert steps(p) == [] and p.waiting
    p = plan(bumped, {}, SETTINGS)  # gone: the new Job resumes the run
    assert steps(p) == [("create", "ConfigMap", "chat-g3"), ("create", "Job", "chat-g3")]
    assert p.actions[1].body["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/trainer:2"


def test_an_invalid_spec_fails_the_run_naming_the_field():
    # fault 4: only an outdated CRD lets such a spec through; it must show on the status, not back off forever
    from datetime import datetime, timezone

    from kubetune.api.validate import validate_manifest
    from kubetune.operator.reconcile import invalid_status
    doc = make_job({"spec": {"hyperparameters": {"epochs": 2}}}, name="chat")
    doc["metadata"].update(namespace="team-a", uid=UID, generation=4)
    doc["status"] = {"runId": "g3-0f1e2d3c", "phase": "Running"}
    job, errors = validate_manifest(doc)
    assert job is None
    status = invalid_status(doc, "; ".join(map(str, errors)), datetime(2026, 11, 22, tzinfo=timezone.utc))
    conds = {c.type: c for c in status.conditions}
    assert status.phase == "Failed" and status.observed_generation == 4 and status.run_id == "g3-0f1e2d3c"
    assert conds["Failed"].reason == conds["Stalled"].reason == "InvalidSpec"
    assert conds["Stalled"].status == "True" and "spec.hyperparameters.epochs" in conds["Failed"].message
