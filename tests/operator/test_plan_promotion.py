"""plan() and the promotion-only Job (issue 23): an override added to a finished run is carried out by one Job
of its own, made once, never taken for a run attempt, and left alone by the clean-up of earlier runs' children."""
from kubetune.api import FineTuneJob, contract
from kubetune.api.status import FineTuneJobStatus
from kubetune.operator import promote_job, runs
from kubetune.operator.labels import LABEL_KUEUE_QUEUE, LABEL_PROMOTION
from kubetune.operator.plan import plan
from tests.operator.test_children import SETTINGS, UID, ftj
from tests.operator.test_plan import observed_children, steps

DESTINATION = "s3://models/models/bot/"
GATE = {"dataset": {"test": "s3://data/test.jsonl"}, "evaluation": {"baseline": True},
        "storage": {"secretRef": {"name": "s3-creds"}}, "promotion": {"destination": DESTINATION}}
OVERRIDE = {"action": "promote", "runId": "g1-0f1e2d3c", "requestedBy": "ann@example.com",
            "reason": "answers read better on billing questions"}
REJECTED = {"verdict": "Rejected", "destination": DESTINATION, "championRunId": "g0-aaaa",
            "reasons": ["does not beat champion g0-aaaa"]}
COMPLETE = [{"type": "Complete", "status": "True"}]


def spec(override: dict | None = OVERRIDE, **more) -> dict:
    promotion = {**GATE["promotion"], **({"override": override} if override else {})}
    return {"spec": {**GATE, "promotion": promotion, **more}}


def ended(patch: dict, phase: str = "Succeeded", promotion: dict | None = REJECTED, generation: int = 2,
          conditions: list | None = None, **more) -> FineTuneJob:
    """The FineTuneJob of `patch` whose run (started at generation 1, without the override) has ended."""
    run = runs.current_run(ftj(spec(None, **more)))
    status = FineTuneJobStatus.model_validate({
        "phase": phase, "runId": run.run_id, "specHash": run.spec_hash, "jobName": run.job_name,
        "observedGeneration": generation, **({"promotion": promotion} if promotion else {}),
        "conditions": conditions or []}).to_wire()
    return ftj(patch, generation=generation, status=status)


def run_children(**more) -> dict[str, list[dict]]:
    """The ended run's Job (Complete) and ConfigMap, of the spec without the override (`more`: its other fields)."""
    return observed_children(ftj(spec(None, **more)), conditions=COMPLETE)


def with_promotion_job(observed: dict, job: FineTuneJob, **job_status) -> tuple[dict, dict]:
    body = promote_job.build(job, runs.current_run(job, observed.get("Job", [])), SETTINGS)
    body["metadata"].update(uid="uid-of-promotion", creationTimestamp="2026-11-22T12:00:00Z")
    body["status"] = job_status
    return {**observed, "Job": [*observed.get("Job", []), body]}, body


def test_a_finished_run_with_a_new_override_gets_exactly_one_promotion_job():
    job = ended(spec())
    p = plan(job, run_children(), SETTINGS)
    [(verb, kind, name)] = steps(p)
    assert (verb, kind) == ("create", "Job") and name.startswith("chat-promote-") and len(name) == 21
    assert p.child["metadata"]["name"] == "chat-g1" and p.run.run_id == job.status.run_id
    body = p.actions[0].body
    assert body["metadata"]["ownerReferences"][0]["uid"] == UID and body["metadata"]["ownerReferences"][0]["controller"]
    assert body["metadata"]["labels"][LABEL_PROMOTION] == name.rsplit("-", 1)[1]
    assert promote_job.is_promotion(body)
    # The same name from a restarted operator; another override (or another run) names another Job.
    assert steps(plan(job, run_children(), SETTINGS)) == [("create", "Job", name)]
    other = ended(spec({**OVERRIDE, "reason": "second thoughts"}))
    assert steps(plan(other, run_children(), SETTINGS))[0][2] != name


def test_the_promotion_job_is_small_restricted_unqueued_and_reads_s3_as_the_trainer_does():
    more = {"scheduling": {"queueName": "team-a", "nodeSelector": {"zone": "eu-1"}, "priorityClassName": "high"},
            "resources": {"gpusPerNode": 2, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}}
    job = ended(spec(**more), **more)
    [action] = plan(job, run_children(**more), SETTINGS).actions
    body = action.body
    assert LABEL_KUEUE_QUEUE not in body["metadata"]["labels"] and "suspend" not in body["spec"]
    assert body["spec"]["ttlSecondsAfterFinished"] > 0 and body["spec"]["backoffLimit"] == 1
    assert body["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"] == [contract.EXIT_BAD_INPUT]
    pod = body["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["command"] == ["python", "-m", "kubetune.trainer.promote"] and "args" not in c
    assert c["image"] == SETTINGS.trainer_image
    assert not [k for k in c["resources"]["requests"] if "gpu" in k] and "tolerations" not in pod
    # Where the run's pods may go, but not onto the GPU product, and not ahead of others.
    assert pod["nodeSelector"] == {"zone": "eu-1"} and "priorityClassName" not in pod
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"]
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    assert '"override"' in env[contract.SPEC_ENV]["value"] and "ann@example.com" in env[contract.SPEC_ENV]["value"]
    # The trainer's pod labels (the admission policy allows no others; a NetworkPolicy for trainers selects them).
    trainer = run_children()["Job"][0]["spec"]["template"]
    assert body["spec"]["template"]["metadata"]["labels"] == trainer["metadata"]["labels"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def test_with_the_promotion_job_observed_nothing_is_created_or_deleted():
    job = ended(spec())
    for state in ({}, {"conditions": COMPLETE}, {"conditions": [{"type": "Failed", "status": "True"}]}):
        observed, _ = with_promotion_job(run_children(), job, **state)
        p = plan(job, observed, SETTINGS)
        assert steps(p) == [] and p.child["metadata"]["name"] == "chat-g1"
        # ...and the run's own children are the run's: the TTL'd run Job's ConfigMap still goes.
        observed = {**observed, "Job": observed["Job"][1:]}
        assert steps(plan(job, observed, SETTINGS)) == [("delete", "ConfigMap", "chat-g1")]


def test_the_promotion_job_is_no_run_attempt():
    job = ended(spec())
    observed, body = with_promotion_job(run_children(), job)
    assert runs.current_run(job, observed["Job"]) == runs.current_run(job, observed["Job"][:1])
    assert runs.current_run(job, [body]) == runs.current_run(job)


def test_no_promotion_job_while_the_run_goes_on_or_for_an_override_it_saw():
    running = ended(spec(), phase="Running", promotion=None)
    assert steps(plan(running, observed_children(ftj(spec(None))), SETTINGS)) == []
    seen = {**REJECTED, "override": {"action": "promote", "runId": OVERRIDE["runId"],
                                     "requestedBy": OVERRIDE["requestedBy"]}}
    assert steps(plan(ended(spec(), promotion=seen), run_children(), SETTINGS)) == []
    assert steps(plan(ended(spec(None)), run_children(), SETTINGS)) == []
    # A failed run can still roll the destination back (or promote another run): its override is carried out.
    failed = ended(spec({**OVERRIDE, "action": "rollback", "runId": "g0-aaaa"}), phase="Failed", promotion=None)
    assert [s[:2] for s in steps(plan(failed, run_children(), SETTINGS))] == [("create", "Job")]


def test_a_failed_promotion_job_is_not_made_again_once_its_ttl_removed_it():
    job = ended(spec())
    name = promote_job.job_name(job, job.status.run_id)
    failed = ended(spec(), conditions=[{"type": "Promoted", "status": "False", "reason": "OverrideFailed",
                                        "message": promote_job.failed_message(name, "BadInput: no summary.json"),
                                        "lastTransitionTime": "2026-11-22T12:00:00Z"}])
    assert steps(plan(failed, run_children(), SETTINGS)) == []
    # Another override (a new reason) is another Job: it is made.
    retried = ended(spec({**OVERRIDE, "reason": "try again"}), conditions=failed.status.to_wire()["conditions"])
    assert [s[:2] for s in steps(plan(retried, run_children(), SETTINGS))] == [("create", "Job")]


def test_a_new_run_removes_the_old_runs_children_but_lets_a_running_promotion_job_finish():
    job = ended(spec())
    observed, body = with_promotion_job(run_children(), job)
    edited = ftj(spec(hyperparameters={"maxSteps": 99}), generation=3, status=job.status.to_wire())
    p = plan(edited, observed, SETTINGS)
    assert steps(p) == [("delete", "Job", "chat-g1"), ("delete", "ConfigMap", "chat-g1"),
                        ("create", "ConfigMap", "chat-g3"), ("create", "Job", "chat-g3")]
    # Once it has stopped, it is an earlier run's child like the others.
    observed, body = with_promotion_job(run_children(), job, conditions=COMPLETE)
    p = plan(edited, observed, SETTINGS)
    assert ("delete", "Job", body["metadata"]["name"]) in steps(p)
