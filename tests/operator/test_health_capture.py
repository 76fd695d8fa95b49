"""Argo CD health and kstatus at every status reason the real operator reaches on the local cluster (kwok GPU
nodes, real Kueue, the real node for what only a kubelet does), checked against the documented expectations
(docs/gitops.md), and the committed Argo CD test data (argocd/.../FineTuneJob/testdata, health_test.yaml) checked
against this fresh capture.

Recapture after a change of the status: `KUBETUNE_RECAPTURE_HEALTH=1 pytest tests/operator/test_health_capture.py
-m cluster` rewrites testdata/*.yaml and health_test.yaml (the objects with their volatile values, such as uids,
times and generated names, replaced by fixed ones), then commit what changed.

Not reached here: Preempted (it needs the ClusterQueue's whole quota, which other tests share), InvalidSpec (only an
outdated CRD lets one through; the unit tests of reconcile.invalid_status cover it) and the short-lived JobCreated
and Pending (a kwok pod starts at once)."""
import copy
import json
import os
import re
import time
from dataclasses import dataclass, field

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubetune.api import contract
from kubetune.api.status import Phase
from tests.observability.argocd import HEALTH_DIR, health
from tests.operator import kstatus
from tests.operator.conftest import manifest, wait_for
from tests.operator.test_kueue_cluster import queue  # noqa: F401  (fixture: a LocalQueue on the real Kueue)
from tests.operator.test_operator_cluster import kwok

ROOT = HEALTH_DIR.parents[3]
PHASES = Phase.__args__
RECAPTURE = os.environ.get("KUBETUNE_RECAPTURE_HEALTH") == "1"
SUMMARY = {"runId": "?", "stopReason": "EarlyStopped", "steps": 40, "totalSteps": 100, "epochs": 2.0,
           "eval": {"loss": 1.5}, "baseline": {"loss": 2.5}, "best": {"name": "loss", "value": 1.4, "step": 30}}
REAL_NODE = {"resources": {"gpusPerNode": 0, "cpu": "100m", "memory": "256Mi", "sharedMemory": "64Mi"},
             "scheduling": {"nodeSelector": {"kubetune.io/real-node": "true"}, "tolerations": [
                 {"key": "kubetune.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]}}
UNPULLABLE = "127.0.0.1:9/kubetune/none:1"  # nothing listens there: the pull fails at once, the same way each time


@dataclass(frozen=True)
class Stage:
    phase: str
    reason: str
    argo: str
    """Argo CD's health status (health.lua)."""
    kstatus: str
    """cli-utils' status.Compute, as Flux `wait: true` reads it."""
    spec: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    """kwok's pod annotations: run time, exit code, termination message."""


STAGES = {
    # testdata/<name>.yaml: what the operator writes there, and how Argo CD and kstatus read it
    "unschedulable": Stage("Pending", "Unschedulable", "Progressing", "InProgress",
                           {"resources": {"gpusPerNode": 1, "gpuProduct": "NVIDIA-B300"}}, kwok(600)),
    "image-pull-back-off": Stage("Pending", "ImagePullBackOff", "Degraded", "InProgress",
                                 {**REAL_NODE, "image": UNPULLABLE}),
    "missing-secret": Stage("Pending", "CreateContainerConfigError", "Degraded", "InProgress",
                            {**REAL_NODE, "storage": {"secretRef": {"name": "no-such-secret"}}}),
    "child-conflict": Stage("Pending", "ChildConflict", "Degraded", "InProgress", {}, kwok(600)),
    "child-forbidden": Stage("Pending", "ChildForbidden", "Degraded", "InProgress", {}, kwok(600)),
    "queued": Stage("Queued", "Queued", "Progressing", "Current", {
        "nodes": 2, "resources": {"gpusPerNode": 16}, "hyperparameters": {"batchSize": 32, "microBatchSize": 1},
        "scheduling": {"queueName": "team-a"}}, kwok(600)),
    "inadmissible": Stage("Queued", "Inadmissible", "Degraded", "Current",
                          {"scheduling": {"queueName": "no-such-queue"}}, kwok(600)),
    "deactivated": Stage("Suspended", "Deactivated", "Suspended", "Current",
                         {"scheduling": {"queueName": "team-a"}}, kwok(600)),
    "suspended": Stage("Suspended", "Suspended", "Suspended", "Current", {"suspend": True}, kwok(600)),
    "running": Stage("Running", "Running", "Progressing", "Current", {}, kwok(600)),
    "running-progress": Stage("Running", "Running", "Progressing", "Current", {}, kwok(600)),
    "restarting": Stage("Running", "Restarting", "Progressing", "Current",
                        {"runPolicy": {"backoffLimit": 1}}, kwok(1, exit_code=1)),
    "gang-restarted": Stage("Running", "Running", "Progressing", "Current", {
        "nodes": 2, "resources": {"gpusPerNode": 1}, "hyperparameters": {"batchSize": 8, "microBatchSize": 4}},
        kwok(600)),
    "succeeded": Stage("Succeeded", "EarlyStopped", "Healthy", "Current", {},
                       kwok(2, message=json.dumps(SUMMARY))),
    "failed-oom": Stage("Failed", "OOMKilled", "Degraded", "Failed", {"runPolicy": {"backoffLimit": 0}},
                        kwok(1, exit_code=137, reason="OOMKilled")),
    "failed-bad-input": Stage("Failed", "BadInput", "Degraded", "Failed", {}, kwok(1, exit_code=contract.EXIT_BAD_INPUT, message=json.dumps(
        {"error": {"reason": "BadInput", "message": "dataset.train line 3: unknown role 'robot'"}}))),
    "failed-backoff-limit": Stage("Failed", "BackoffLimitExceeded", "Degraded", "Failed",
                                  {"runPolicy": {"backoffLimit": 1}}, kwok(1, exit_code=1)),
    "failed-deadline": Stage("Failed", "DeadlineExceeded", "Degraded", "Failed",
                             {"runPolicy": {"activeDeadlineSeconds": 2}}, kwok(600)),
    "child-rejected": Stage("Failed", "ChildRejected", "Degraded", "Failed", {"scheduling": {"affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "Near", "values": ["a"]}]}]}}}}}),
    # the `running` object after a spec edit the operator has not seen, then once it has: a new run
    "stale-generation": Stage("Running", "Running", "Progressing", "InProgress"),
    "new-run": Stage("Running", "Running", "Progressing", "Current"),
}
ANOTHER_RUN = {"restarting": "failed-backoff-limit", "stale-generation": "running", "new-run": "running"}
"""Stages read from another stage's object, later in its life."""

LOCAL_IMAGE = "localhost/kubetune/pause:on-the-node"
FIXED_UID, FIXED_TIME, FIXED_NAMESPACE = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "2026-11-26T11:05:02Z", "team-a"


def normalized(obj: dict, local_image: str) -> dict:
    """The object with what differs from capture to capture (uids, times, resourceVersion, the namespace, generated
    names, counts of other objects, the node's image tag) replaced by fixed values: the test data changes only when
    the status does."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for key in ("managedFields", "resourceVersion"):
        meta.pop(key, None)
    uid, namespace = meta["uid"], meta["namespace"]
    text = json.dumps(obj).replace(uid, FIXED_UID).replace(uid[:8], FIXED_UID[:8]).replace(namespace, FIXED_NAMESPACE)
    text = text.replace(local_image, LOCAL_IMAGE)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", FIXED_TIME, text)
    text = re.sub(r"(-g\d+(?:-a\d+)?(?:-\d+)?)-[a-z0-9]{5}\b", r"\1-xxxxx", text)  # pods' generated suffixes
    text = re.sub(r"(used: [a-z/.]+)=\d+", r"\1=N", text)  # a quota's count of the namespace's other objects
    return json.loads(text)


def capture_progress(cluster, namespace: str, name: str, read) -> None:
    """The trainer's gauges served on the kwok pod's IP (pod-targets routes it here), where the operator reads them."""
    pod = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={name}-g1")
    registry = CollectorRegistry()
    for metric, value in ((contract.METRIC_STEP, 300), (contract.METRIC_TOTAL_STEPS, 1200),
                          (contract.METRIC_TRAIN_LOSS, 1.8421), (contract.METRIC_EVAL_LOSS, 1.90349),
                          (contract.METRIC_ETA_SECONDS, 2700), (contract.METRIC_TOKENS_PER_SECOND, 5120)):
        Gauge(metric, metric, registry=registry).set(value)
    server, _ = start_http_server(contract.METRICS_PORT, addr=pod["items"][0]["status"]["podIP"], registry=registry)
    try:
        wait_for("progress", lambda: ((read(name).get("status") or {}).get("progress") or {}).get("step") == 300,
                 timeout=60, interval=0.2)
    finally:
        server.shutdown()


@pytest.mark.cluster
def test_every_reason_reads_as_documented_and_matches_the_committed_health_data(
        cluster, namespace, operators, operator, queue):  # noqa: F811
    live = [name for name in STAGES if name not in ANOTHER_RUN]
    if not cluster.real_node:
        pytest.skip("the local cluster has no real node (image pulls and container configuration need a kubelet)")
    captured: dict[str, dict] = {}
    started = time.monotonic()

    def read(name: str) -> dict:
        return cluster.kubectl_json("get", "ftj", name, "-n", namespace)

    def reached(name: str, stage: str):
        def probe():
            obj = read(name)
            st = obj.get("status") or {}
            ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
            at = (st.get("observedGeneration") == obj["metadata"]["generation"] and st.get("phase") == STAGES[stage].phase
                  and ready.get("reason") == STAGES[stage].reason)
            if at and stage == "image-pull-back-off":  # the kubelet's first verdict is ErrImagePull
                at = ready["message"].startswith("Back-off pulling image")
            return at and obj
        return probe

    def capture(stage: str, name: str | None = None, timeout: float = 60) -> None:
        print(f"{time.monotonic() - started:6.1f} s: waiting for {stage}")
        try:
            captured[stage] = wait_for(f"{name or stage} at {stage}", reached(name or stage, stage), timeout=timeout,
                                       interval=0.2)
        except AssertionError as timeout_error:
            raise AssertionError(f"{timeout_error}; its status: {read(name or stage).get('status')}") from None

    cluster.kubectl("create", "configmap", "child-conflict-g1", "-n", namespace)  # a name the operator needs
    # an image the real node has: the kubelet gets as far as the container's configuration
    local_image = cluster.kubectl_json("get", "node", cluster.real_node)["status"]["images"][0]["names"][0]
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        json.loads(manifest(name, {**STAGES[name].spec, **({"image": local_image} if name == "missing-secret" else {})},
                            STAGES[name].notes)) for name in live if name != "child-forbidden"]}))
    capture("restarting", "failed-backoff-limit")  # the Job's 10 s back-off before its second pod
    for name in ("running", "running-progress", "gang-restarted", "deactivated", "queued"):
        wait_for(f"{name} to start", lambda: (read(name).get("status") or {}).get("phase") in ("Running", "Queued"),
                 timeout=60, interval=0.2)
    capture_progress(cluster, namespace, "running-progress", read)
    capture("running-progress")
    [workload] = [w for w in cluster.kubectl_json("get", "workloads", "-n", namespace)["items"]
                  if w["metadata"]["labels"].get("kueue.x-k8s.io/job-uid") == cluster.kubectl_json(
                      "get", "job", "deactivated-g1", "-n", namespace)["metadata"]["uid"]]
    cluster.kubectl("patch", "workload", workload["metadata"]["name"], "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"active":false}}')  # as Kueue does after too many requeues
    gang_pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=gang-restarted-g1")
    cluster.kubectl("delete", "pod", gang_pods["items"][0]["metadata"]["name"], "-n", namespace, "--wait=false")
    wait_for("the gang's second attempt", lambda: (read("gang-restarted").get("status") or {}).get("attempts") == 2,
             timeout=60, interval=0.2)
    for name in live:
        if name not in ("child-forbidden", "running-progress"):
            capture(name, timeout=90)
    # the quota comes last: no other stage may need a new ConfigMap after it
    cluster.kubectl("create", "quota", "no-configmaps", "--hard=configmaps=0", "-n", namespace)
    wait_for("the quota to be counted", lambda: cluster.kubectl_json(
        "get", "quota", "no-configmaps", "-n", namespace).get("status", {}).get("hard"))
    cluster.kubectl("create", "-n", namespace, "-f", "-",
                    input=manifest("child-forbidden", STAGES["child-forbidden"].spec, STAGES["child-forbidden"].notes))
    capture("child-forbidden")
    cluster.kubectl("delete", "quota", "no-configmaps", "-n", namespace)
    # a spec edit the operator has not seen yet, then the new run it starts
    operator.stop()
    cluster.kubectl("patch", "ftj", "running", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"hyperparameters": {"learningRate": 1e-4}}}))
    captured["stale-generation"] = read("running")
    operators.start()
    capture("new-run", "running")

    objs = {stage: normalized(captured[stage], local_image) for stage in STAGES}
    verdicts = dict(zip(objs, kstatus.compute_all(list(objs.values()))))
    got, want = {}, {}
    for stage, obj in objs.items():
        st = obj["status"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        got[stage] = (st["phase"], ready["reason"], health(obj)["status"], verdicts[stage][0])
        want[stage] = (STAGES[stage].phase, STAGES[stage].reason, STAGES[stage].argo, STAGES[stage].kstatus)
    assert got == want

    cases = [{"healthStatus": health(obj), "inputPath": f"testdata/{stage}.yaml"} for stage, obj in objs.items()]
    if RECAPTURE:
        write(objs, cases)
    committed = yaml.safe_load((HEALTH_DIR / "health_test.yaml").read_text())["tests"]
    assert committed == cases, "health_test.yaml differs from a fresh capture (KUBETUNE_RECAPTURE_HEALTH=1 rewrites it)"
    assert sorted(p.stem for p in (HEALTH_DIR / "testdata").glob("*.yaml")) == sorted(objs)
    for stage, obj in objs.items():
        assert yaml.safe_load((HEALTH_DIR / "testdata" / f"{stage}.yaml").read_text()) == obj, (
            f"testdata/{stage}.yaml differs from a fresh capture (KUBETUNE_RECAPTURE_HEALTH=1 rewrites it)")


def documented() -> dict[tuple[str, str], tuple[str, str]]:
    """(phase, reason) -> (Argo CD health, kstatus), from the table in docs/gitops.md."""
    table = {}
    for line in (ROOT / "docs" / "gitops.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and ":" in cells[0] and cells[0].split(":")[0] in PHASES:
            phase = cells[0].split(":")[0]
            for reason in re.findall(r"`(\w+)`", cells[0].split(":", 1)[1]):
                table[(phase, reason)] = (cells[1].split()[0], cells[2].split()[0].rstrip(":"))
    return table


def test_the_documented_table_says_what_the_capture_checks():
    table = documented()
    assert {name: table.get((s.phase, s.reason)) for name, s in STAGES.items() if name != "stale-generation"} == {
        name: (s.argo, s.kstatus) for name, s in STAGES.items() if name != "stale-generation"}


def write(objs: dict[str, dict], cases: list[dict]) -> None:
    out = HEALTH_DIR / "testdata"
    for stale in out.glob("*.yaml"):
        stale.unlink()
    for stage, obj in objs.items():
        (out / f"{stage}.yaml").write_text(yaml.safe_dump(obj, sort_keys=False))
    text = (HEALTH_DIR / "health_test.yaml").read_text()
    header = text[:text.index("tests:")]
    (HEALTH_DIR / "health_test.yaml").write_text(header + yaml.safe_dump({"tests": cases}, sort_keys=False, width=120))
