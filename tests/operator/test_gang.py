"""Multi-node runs restart as a gang (issue 16, item 3): plan() and the status on plain dicts."""
import dataclasses

import pytest

from kubetune.api import Reason
from kubetune.operator import children, labels, runs
from kubetune.operator.plan import plan
from kubetune.operator.status import compute_status
from tests.operator import kstatus
from tests.operator.test_children import SETTINGS, built, ftj
from tests.operator.test_plan import MULTI_NODE, steps
from tests.operator.test_status import NOW, pod

DISRUPTED = ("PodFailurePolicy",
             "Pod team-a/{job}-1-abcde has condition DisruptionTarget matching FailJob rule at index 0")
BAD_INPUT = ("PodFailurePolicy",
             "Container trainer for pod team-a/{job}-1-abcde failed with exit code 64 matching FailJob rule at index 1")
LOST = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")


def gang_job(patch: dict | None = None, **kw):
    return ftj({"spec": {**MULTI_NODE["spec"], **((patch or {}).get("spec") or {})}}, **kw)


def attempt(job, run: runs.Run, *conditions: tuple[str, tuple[str, str]], created="2026-11-22T11:00:00Z") -> dict:
    """The Job of one attempt as the API server returns it, with `conditions` (type, (reason, message))."""
    k8s = children.build_job(job, run, SETTINGS)
    k8s["metadata"].update(uid=f"uid-{run.job_name}", creationTimestamp=created)
    k8s["status"] = {"conditions": [{"type": t, "status": "True", "reason": r, "message": m.format(job=run.job_name)}
                                    for t, (r, m) in conditions]}
    return k8s


def gang_pod(k8s: dict, index: int, phase: str, exit_code: int | None = None, deleting: bool = False,
             disrupted: bool = False, reason: str | None = None) -> dict:
    p = pod(phase, exit_code=exit_code, reason=reason)
    p["metadata"] = {"name": f"{k8s['metadata']['name']}-{index}-abcde",
                     "labels": {labels.LABEL_CONTROLLER_UID: k8s["metadata"].get("uid", "new")},
                     "annotations": {labels.INDEX_ANNOTATION: str(index)},
                     **({"deletionTimestamp": "2026-11-22T11:05:00Z"} if deleting else {})}
    if disrupted:
        p["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
    return p


def observed(job, *jobs: dict, pods: list[dict] = ()) -> dict:
    """The children of the runs `jobs` execute (dependents named after each Job), and `pods`."""
    out: dict = {"Job": list(jobs), "Pod": list(pods)}
    for k8s in jobs:
        run = dataclasses.replace(runs.current_run(job), job_name=k8s["metadata"]["name"])
        for dep in children.build_dependents(job, run, SETTINGS):
            out.setdefault(dep["kind"], []).append(dep)
    return out


def ended(job, *condition, pods=lambda k8s: []):
    """A first attempt that ended with `condition` (type, (reason, message)), and the plan for it."""
    run = runs.current_run(job)
    first = attempt(job, run, *condition)
    return run, first, plan(job, observed(job, first, pods=pods(first)), SETTINGS)


def test_a_gang_job_fails_whole_and_records_its_attempt():
    k8s, _, _ = built(MULTI_NODE)
    assert k8s["spec"]["backoffLimit"] == 0  # the operator counts: runPolicy.backoffLimit is not the Job's
    disruption, fatal = k8s["spec"]["podFailurePolicy"]["rules"]
    assert disruption["action"] == "FailJob" and disruption["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert fatal["action"] == "FailJob" and fatal["onExitCodes"]["values"] == [64, 65]
    assert k8s["metadata"]["annotations"][labels.ANNOTATION_ATTEMPT] == "1"
    assert k8s["metadata"]["annotations"][labels.ANNOTATION_FAILURES] == "0"
    # one node keeps the Job's own retries: the pod is the whole gang
    single, _, _ = built({"spec": {"runPolicy": {"backoffLimit": 5}}})
    assert single["spec"]["backoffLimit"] == 5 and single["spec"]["podFailurePolicy"]["rules"][0]["action"] == "Ignore"
    assert labels.ANNOTATION_ATTEMPT not in single["metadata"]["annotations"]


def test_one_failed_index_starts_the_next_attempt_of_the_same_run():
    job = gang_job()
    run, first, p = ended(job, ("FailureTarget", LOST), ("Failed", LOST), pods=lambda k8s: [
        gang_pod(k8s, 1, "Failed", exit_code=1)])  # index 0 was stopped by the Job controller: gone
    # the new attempt's children first, then the ended attempt's (a crash in between loses no count)
    assert steps(p) == [("create", "ConfigMap", "chat-g1-a2"), ("create", "Service", "chat-g1-a2"),
                        ("create", "Job", "chat-g1-a2"), ("delete", "Job", "chat-g1"),
                        ("delete", "Service", "chat-g1"), ("delete", "ConfigMap", "chat-g1")]
    assert {a.propagation for a in p.actions if a.verb == "delete"} == {"Background"}  # its pods have stopped
    new = p.actions[2].body
    notes = new["metadata"]["annotations"]
    assert (notes[labels.ANNOTATION_ATTEMPT], notes[labels.ANNOTATION_FAILURES]) == ("2", "1")
    assert "index 1 (chat-g1-1-abcde) failed" in notes[labels.ANNOTATION_RESTART_REASON]
    assert "exit code 1" in notes[labels.ANNOTATION_RESTART_REASON]
    env = {e["name"]: e.get("value") for e in new["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_RUN_ID"] == run.run_id and new["metadata"]["labels"][labels.LABEL_RUN_ID] == run.run_id
    assert env["MASTER_ADDR"] == "chat-g1-a2-0.chat-g1-a2"
    assert p.run.run_id == run.run_id and (p.run.attempt, p.run.failures) == (2, 1)


def test_the_next_attempt_waits_until_every_pod_of_the_last_has_stopped():
    job = gang_job()
    _, first, p = ended(job, ("FailureTarget", LOST), pods=lambda k8s: [
        gang_pod(k8s, 0, "Running", deleting=True), gang_pod(k8s, 1, "Failed", exit_code=1)])
    assert steps(p) == [] and p.child is first
    assert (p.state.phase, p.state.reason) == ("Running", Reason.RESTARTING)
    assert "waiting for its other pods to stop" in p.state.message and "1 of 3 failures" in p.state.message


def test_a_disruption_restarts_the_gang_without_counting():
    job = gang_job()
    _, _, p = ended(job, ("FailureTarget", DISRUPTED), ("Failed", DISRUPTED))  # the evicted pod is gone
    new = next(a.body for a in p.actions if a.verb == "create" and a.kind == "Job")
    assert new["metadata"]["name"] == "chat-g1-a2"
    assert new["metadata"]["annotations"][labels.ANNOTATION_FAILURES] == "0"
    assert "DisruptionTarget" in new["metadata"]["annotations"][labels.ANNOTATION_RESTART_REASON]
    # judged by the pod too, when it is still there and the policy's message says nothing
    _, _, p = ended(job, ("Failed", LOST), pods=lambda k8s: [gang_pod(k8s, 1, "Failed", 143, disrupted=True)])
    assert p.run.failures == 0 and p.run.attempt == 2


@pytest.mark.parametrize("condition, pods, reason", [
    (BAD_INPUT, lambda k8s: [], Reason.BAD_INPUT),  # exit 64 matched the FailJob rule; the pod may be gone
    (BAD_INPUT, lambda k8s: [gang_pod(k8s, 1, "Failed", 64)], Reason.BAD_INPUT),
    (LOST, lambda k8s: [gang_pod(k8s, 0, "Failed", 65)], Reason.OOM_KILLED),
    (LOST, lambda k8s: [gang_pod(k8s, 1, "Failed", 137, reason="OOMKilled")], Reason.OOM_KILLED),
    (("DeadlineExceeded", "Job was active longer than specified deadline"), lambda k8s: [], Reason.DEADLINE_EXCEEDED),
])
def test_bad_input_out_of_memory_and_the_deadline_fail_the_run_at_once(condition, pods, reason):
    job = gang_job()
    _, first, p = ended(job, ("FailureTarget", condition), ("Failed", condition), pods=pods)
    assert steps(p) == [] and p.child is first and (p.state.phase, p.state.reason) == ("Failed", reason)
    status, _ = compute_status(job, p.run, first, pods(first), None, NOW, problem=p.state)
    assert status.phase == "Failed" and status.attempts == 1 and status.failures == 0


def test_failures_beyond_the_backoff_limit_fail_the_run():
    job = gang_job({"spec": {"runPolicy": {"backoffLimit": 2}}})
    run = dataclasses.replace(runs.current_run(job), job_name="chat-g1-a3", attempt=3, failures=2)
    third = attempt(job, run, ("Failed", LOST))
    p = plan(job, observed(job, third, pods=[gang_pod(third, 0, "Failed", exit_code=1)]), SETTINGS)
    assert steps(p) == [] and (p.state.phase, p.state.reason) == ("Failed", Reason.BACKOFF_LIMIT_EXCEEDED)
    assert "3 failures exceed runPolicy.backoffLimit 2" in p.state.message
    status, _ = compute_status(job, p.run, third, [], None, NOW, problem=p.state)
    assert (status.phase, status.attempts, status.restarts, status.failures) == ("Failed", 3, 2, 3)
    # and it stays failed: the next reconcile (status written, pods gone) starts nothing
    again = gang_job({"spec": {"runPolicy": {"backoffLimit": 2}}}, status=status.to_wire())
    assert steps(plan(again, observed(again, third), SETTINGS)) == []


def test_the_newest_attempt_is_the_runs_job_and_the_ended_one_goes():
    job = gang_job()
    run = runs.current_run(job)
    first = attempt(job, run, ("Failed", LOST))
    second_run = dataclasses.replace(run, job_name="chat-g1-a2", attempt=2, failures=1)
    second = attempt(job, second_run)  # created in the same second as the first: the attempt number decides
    p = plan(job, observed(job, first, second), SETTINGS)
    assert p.child is second and (p.run.attempt, p.run.failures) == (2, 1) and p.state is None
    assert steps(p) == [("delete", "Job", "chat-g1"), ("delete", "Service", "chat-g1"),
                        ("delete", "ConfigMap", "chat-g1")]
    tenth = attempt(job, dataclasses.replace(run, job_name="chat-g1-a10", attempt=10))
    ninth = attempt(job, dataclasses.replace(run, job_name="chat-g1-a9", attempt=9), ("Failed", LOST))
    assert plan(job, observed(job, ninth, tenth), SETTINGS).child is tenth


def test_status_of_a_gang_restarting_says_why_and_counts_attempts():
    job = gang_job()
    _, first, p = ended(job, ("Failed", LOST), pods=lambda k8s: [gang_pod(k8s, 1, "Failed", exit_code=1)])
    new = dict(next(a.body for a in p.actions if a.verb == "create" and a.kind == "Job"), status={})
    starting, events = compute_status(job, p.run, new, [], None, NOW)
    assert (starting.phase, starting.job_name, starting.attempts, starting.restarts, starting.failures) == (
        "Running", "chat-g1-a2", 2, 1, 1)
    ready = {c.type: c for c in starting.conditions}["Ready"]
    assert ready.reason == Reason.RESTARTING and "gang attempt 2 is starting after: index 1" in ready.message
    assert [e.reason for e in events] == [Reason.RESTARTING]
    running, _ = compute_status(job, p.run, {**new, "status": {"active": 2}},
                                [gang_pod(new, 0, "Running"), gang_pod(new, 1, "Running")], None, NOW)
    assert (running.phase, running.attempts, running.restarts) == ("Running", 2, 1)
    assert {c.type: c for c in running.conditions}["Ready"].reason == Reason.RUNNING
    # kstatus (Flux wait, Argo CD): Current while the gang restarts and runs, as for a batch Job that retries a pod
    for status in (starting, running):
        assert kstatus.compute({"metadata": {"generation": 1}, "status": status.to_wire()})[0] == "Current"


def test_an_unrelated_uid_pod_does_not_judge_the_attempt():
    job = gang_job()
    _, _, p = ended(job, ("Failed", LOST), pods=lambda k8s: [
        {**gang_pod(k8s, 1, "Failed", 64), "metadata": {"name": "x", "labels": {labels.LABEL_CONTROLLER_UID: "other"}}}])
    assert p.run.attempt == 2 and p.run.failures == 1  # a counted failure, not bad input


def test_a_gang_attempt_gets_its_ttl_only_once_the_run_has_ended():
    # the TTL controller would delete a failed attempt (and its count) before the next one starts
    job = gang_job({"spec": {"runPolicy": {"ttlSecondsAfterFinished": 0}}})
    run = runs.current_run(job)
    assert "ttlSecondsAfterFinished" not in children.build_job(job, run, SETTINGS)["spec"]
    running = attempt(job, run)
    assert steps(plan(job, observed(job, running), SETTINGS)) == []  # not patched in while it runs
    _, _, stopping = ended(job, ("FailureTarget", LOST))
    assert steps(stopping) == []
    _, failed, p = ended(job, ("FailureTarget", BAD_INPUT), ("Failed", BAD_INPUT))
    assert [(a.verb, a.body) for a in p.actions] == [("patch", {"spec": {"ttlSecondsAfterFinished": 0}})]
    done = attempt(job, run, ("Complete", ("CompletionsReached", "")))
    assert [a.body for a in plan(job, observed(job, done), SETTINGS).actions] == [
        {"spec": {"ttlSecondsAfterFinished": 0}}]


def test_a_foreign_object_with_the_next_attempts_name_keeps_the_ended_attempt():
    job = gang_job()
    run = runs.current_run(job)
    first = attempt(job, run, ("Failed", LOST))
    taken = observed(job, first)
    squatter = {"kind": "ConfigMap", "metadata": {"name": "chat-g1-a2", "ownerReferences": []}}
    p = plan(job, {**taken, "ConfigMap": taken["ConfigMap"] + [squatter]}, SETTINGS)
    assert p.conflict and "ConfigMap chat-g1-a2" in p.conflict and steps(p) == []
