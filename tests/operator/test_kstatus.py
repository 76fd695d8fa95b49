"""kstatus, as Flux's `wait: true` reads a FineTuneJob: the real library (sigs.k8s.io/cli-utils status.Compute,
through hack/kstatus) over the statuses the operator computes and writes. The contract (docs/gitops.md): InProgress
until the trainer starts or while a spec edit is unobserved, Current while the run runs, is held (Queued,
Suspended) or has finished, Failed once it failed; a refusal the operator retries is InProgress, not Failed."""
import json

import pytest

from kubetune.api import Reason
from kubetune.operator import runs
from kubetune.operator.status import State, compute_status
from tests.operator import kstatus
from tests.operator.test_children import ftj
from tests.operator.test_kueue_cluster import queue  # noqa: F401  (fixture: a LocalQueue on the real Kueue)
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
    # refusals the operator retries: in progress (Flux waits, then times out with the message), never Failed
    "refused by a quota": ({}, None, [], State("Pending", Reason.CHILD_FORBIDDEN, "exceeded quota", stalled=True),
                           "InProgress"),
    "name taken": ({}, None, [], State("Pending", Reason.CHILD_CONFLICT, "Job x-g1 exists", stalled=True),
                   "InProgress"),
    "rejected as invalid": ({}, None, [], State("Failed", Reason.CHILD_REJECTED, "spec.affinity", stalled=True),
                            "Failed"),
}


def resource(job, status) -> dict:
    return {"metadata": {"name": job.metadata.name, "generation": job.metadata.generation},
            "status": status.to_wire()}


def test_each_stage_reads_as_kstatus_reads_a_batch_job():
    statuses = {}
    for stage, (patch, k8s, pods, problem, _) in STAGES.items():
        job = ftj(patch, generation=2)
        status, _ = compute_status(job, runs.current_run(job), k8s, pods, None, NOW, problem=problem)
        statuses[stage] = resource(job, status)
    got = dict(zip(STAGES, (s for s, _ in kstatus.compute_all(list(statuses.values())))))
    assert got == {stage: want[-1] for stage, want in STAGES.items()}


def test_an_unobserved_edit_is_in_progress_and_a_deletion_terminating():
    job = ftj(generation=1)
    status, _ = compute_status(job, runs.current_run(job), k8s_job(), [pod("Running")], None, NOW)
    edited = resource(job, status)
    edited["metadata"]["generation"] = 2  # the spec changed; the operator has not written a status for it yet
    deleting = json.loads(json.dumps(edited))
    deleting["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    assert kstatus.compute_all([resource(job, status), edited, deleting]) == [
        ("Current", "Resource is Ready"),
        ("InProgress", "FineTuneJob generation is 2, but latest observed generation is 1"),
        ("Terminating", "Resource scheduled for deletion")]


def test_the_library_falls_back_to_ready_for_a_kind_it_does_not_know():
    """Why Ready must be True while a run is under way: with Reconciling and Stalled False, cli-utils' Compute reads
    Ready (checkReadyCondition), and Ready=False is InProgress (what Flux waited on for a whole run)."""
    def conditions(ready: str) -> dict:
        return {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": [
            {"type": "Reconciling", "status": "False", "reason": "Reconciled"},
            {"type": "Stalled", "status": "False", "reason": "AsExpected"},
            {"type": "Ready", "status": ready, "reason": "Running", "message": "training"}]}}
    assert kstatus.compute_all([conditions("False"), conditions("True"), {"metadata": {"generation": 3}}]) == [
        ("InProgress", "training"), ("Current", "Resource is Ready"), ("Current", "Resource is current")]


LIVE = {
    # name: (spec, kwok pod annotations, the (phase, reason) to wait for, kstatus there)
    "pending": ({"resources": {"gpuProduct": "NVIDIA-B300"}}, {}, ("Pending", Reason.UNSCHEDULABLE), "InProgress"),
    "running": ({}, {"run-seconds": "600"}, ("Running", Reason.RUNNING), "Current"),
    "suspended": ({"suspend": True}, {}, ("Suspended", Reason.SUSPENDED), "Current"),
    # two nodes of 16 GPUs: more than the ClusterQueue's quota, so Kueue holds it for good
    "queued": ({"nodes": 2, "resources": {"gpusPerNode": 16}, "hyperparameters": {"batchSize": 32, "microBatchSize": 1},
                "scheduling": {"queueName": "team-a"}}, {}, ("Queued", Reason.QUEUED), "Current"),
    "succeeded": ({}, {"run-seconds": "1"}, ("Succeeded", Reason.COMPLETED), "Current"),
    "failed": ({"runPolicy": {"backoffLimit": 0}}, {"run-seconds": "1", "exit-code": "1"},
               ("Failed", Reason.BACKOFF_LIMIT_EXCEEDED), "Failed"),
    # its ConfigMap's name is taken (created below): the operator retries until it is free
    "conflict": ({}, {}, ("Pending", Reason.CHILD_CONFLICT), "InProgress"),
}


def expected_kstatus(obj: dict) -> str:
    """The contract, from what the object says about itself (before the operator's first write, the status is the
    CRD's default, observedGeneration 0)."""
    status = obj["status"]
    if status.get("observedGeneration") != obj["metadata"]["generation"] or status.get("phase") == "Pending":
        return "InProgress"
    return "Failed" if status["phase"] == "Failed" else "Current"


@pytest.mark.cluster
def test_the_real_kstatus_reads_each_stage_of_live_runs(cluster, namespace, operators, operator, queue):  # noqa: F811
    """Every stage at once on the real operator with kwok pods and real Kueue; every status seen while polling
    (the brief JobCreated/Pending ones included) is read through the library, as Flux reads it."""
    from tests.operator.conftest import manifest, wait_for

    cluster.kubectl("create", "configmap", "conflict-g1", "-n", namespace)
    for name, (spec, notes, _, _) in LIVE.items():
        annotations = {f"kwok.kubetune.io/{k}": v for k, v in notes.items()}
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=manifest(name, spec, annotations))
    seen: dict[tuple, set[str]] = {}  # (name, generation, observedGeneration, phase, reason) -> kstatus
    wrong: list[str] = []

    def poll() -> dict[str, dict]:
        objs = cluster.kubectl_json("get", "ftj", "-n", namespace)["items"]
        for obj, (verdict, message) in zip(objs, kstatus.compute_all(objs)):
            st = obj.get("status") or {}
            ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
            key = (obj["metadata"]["name"], obj["metadata"]["generation"], st.get("observedGeneration"),
                   st.get("phase"), ready.get("reason"))
            seen.setdefault(key, set()).add(verdict)
            if verdict != expected_kstatus(obj):
                wrong.append(f"{key}: kstatus {verdict} ({message}), expected {expected_kstatus(obj)}")
        return {o["metadata"]["name"]: o for o in objs}

    def reached(objs: dict[str, dict]) -> bool:
        return all(((objs.get(name) or {}).get("status") or {}).get("phase") == phase
                   and next(c["reason"] for c in objs[name]["status"]["conditions"] if c["type"] == "Ready") == reason
                   for name, (_, _, (phase, reason), _) in LIVE.items())

    wait_for("every stage", lambda: reached(poll()), timeout=90, interval=0.2)
    last = poll()
    got = {name: kstatus.compute(last[name])[0] for name in LIVE}
    assert got == {name: want for name, (*_, want) in LIVE.items()}, (got, seen)

    # A spec edit the operator has not seen yet, then the new run it starts.
    operator.stop()
    cluster.kubectl("patch", "ftj", "running", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"hyperparameters": {"learningRate": 1e-4}}}))
    edited = poll()["running"]  # the operator is stopped: what Flux reads until it is back
    assert kstatus.compute(edited) == ("InProgress", "FineTuneJob generation is 2, but latest observed generation is 1")
    operators.start()
    wait_for("generation 2 running", lambda: (lambda st: st.get("observedGeneration") == 2 and st.get("phase") == "Running")(
        poll()["running"].get("status") or {}), timeout=60, interval=0.2)
    assert not wrong, "\n".join(dict.fromkeys(wrong))
    assert {"InProgress"} == seen[("running", 2, 1, "Running", "Running")]
    assert {"Current"} == seen[("running", 2, 2, "Running", "Running")]


@pytest.mark.cluster
def test_a_job_the_operator_has_not_seen_yet_is_in_progress(cluster, namespace, finetunejob_crd):
    """No operator watches this namespace: the object as Flux reads it right after applying it. Without the CRD's
    status default it has no status at all, which kstatus reads as Current (Flux would pass at once)."""
    from tests.operator.conftest import manifest

    cluster.kubectl("create", "-n", namespace, "-f", "-", input=manifest("unseen"))
    obj = cluster.kubectl_json("get", "ftj", "unseen", "-n", namespace)
    assert kstatus.compute(obj) == ("InProgress", "FineTuneJob generation is 1, but latest observed generation is 0")
    assert obj["status"]["observedGeneration"] == 0 and not obj["status"]["conditions"]
