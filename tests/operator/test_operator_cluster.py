"""The operator on the real local control plane: kwok moves trainer pods through their lifecycle (run time,
exit code, OOM, the trainer's termination message come from pod annotations); the operator runs as its own
ServiceAccount with the RBAC of config/rbac/."""
import json
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubetune.api import contract
from tests.operator.conftest import manifest, wait_for

pytestmark = pytest.mark.cluster

SUMMARY = {"runId": "?", "stopReason": "EarlyStopped", "steps": 40, "totalSteps": 100, "epochs": 2.0,
           "eval": {"loss": 1.5}, "baseline": {"loss": 2.5}, "best": {"name": "loss", "value": 1.4, "step": 30},
           "artifacts": {"uri": "s3://artifacts/case/x", "modelUri": "s3://artifacts/case/x/model"}}


def kwok(seconds: float = 1, exit_code: int = 0, reason: str | None = None, message: str | None = None,
         stop_seconds: float | None = None) -> dict:
    """The pods' lifetime on kwok (hack/README.md): run `seconds`, exit `exit_code`; once deleted, stop after
    `stop_seconds`."""
    notes = {"kwok.kubetune.io/run-seconds": str(seconds), "kwok.kubetune.io/exit-code": str(exit_code)}
    if stop_seconds is not None:
        notes["kwok.kubetune.io/stop-seconds"] = str(stop_seconds)
    if reason:
        notes["kwok.kubetune.io/reason"] = reason
    if message:
        notes["kwok.kubetune.io/termination-message"] = message
    return notes


def ftj(cluster, namespace, name):
    return cluster.kubectl_json("get", "ftj", name, "-n", namespace)


def status(cluster, namespace, name) -> dict:
    return ftj(cluster, namespace, name).get("status") or {}


def jobs(cluster, namespace) -> list[dict]:
    return cluster.kubectl_json("get", "jobs", "-n", namespace)["items"]


def phase_is(cluster, namespace, name, phase):
    return lambda: status(cluster, namespace, name).get("phase") == phase and status(cluster, namespace, name)


def events(cluster, namespace, name) -> list[str]:
    items = cluster.kubectl_json("get", "events", "-n", namespace,
                                 "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in items]


def test_apply_run_succeed_with_trainer_summary(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "chat", {"resources": {"gpusPerNode": 1}},
        kwok(seconds=3, message=json.dumps(SUMMARY))))
    job = wait_for("the trainer Job", lambda: jobs(cluster, namespace))[0]
    uid = ftj(cluster, namespace, "chat")["metadata"]["uid"]
    assert job["metadata"]["name"] == "chat-g1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"] == [64, 65]
    config = cluster.kubectl_json("get", "configmap", "chat-g1", "-n", namespace)
    assert json.loads(config["data"]["finetunejob.json"])["metadata"]["uid"] == uid
    wait_for("Running", phase_is(cluster, namespace, "chat", "Running"), timeout=30)
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/chat", "-n", namespace, "--timeout=60s")
    st = status(cluster, namespace, "chat")
    assert (st["phase"], st["stopReason"], st["observedGeneration"]) == ("Succeeded", "EarlyStopped", 1)
    assert st["progress"]["step"] == 40 and st["metrics"]["best"] == {"name": "loss", "value": 1.4, "step": 30}
    assert st["metrics"]["baseline"] == {"loss": 2.5} and st["artifacts"]["modelUri"].endswith("/model")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Reconciling"]["status"] == "False"
    assert conds["Succeeded"]["reason"] == "EarlyStopped" and conds["Succeeded"]["observedGeneration"] == 1
    reasons = wait_for("events", lambda: (lambda r: "EarlyStopped" in r and r)(events(cluster, namespace, "chat")))
    assert {"JobCreated", "Running", "EarlyStopped"} <= set(reasons)
    meta = ftj(cluster, namespace, "chat")["metadata"]
    # level-based event handlers only: kopf keeps no state on the object (no annotations, no finalizer)
    assert not any(k.startswith(("kubetune.io/", "kopf.zalando.org", "kopf.dev")) for k in meta.get("annotations", {}))
    assert not meta.get("finalizers") and "kopf" not in json.dumps(st)
    table = cluster.kubectl("get", "ftj", "chat", "-n", namespace).stdout
    assert "Succeeded" in table and "100" in table


def test_live_progress_from_the_trainer_metrics_endpoint(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("live", annotations=kwok(seconds=40)))
    running = wait_for("Running", phase_is(cluster, namespace, "live", "Running"), timeout=30)
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=live-g1")
    pod_ip = pods["items"][0]["status"]["podIP"]
    # The trainer's endpoint on the pod's IP (kwok's pod CIDR is on loopback), with the contract's gauges.
    registry = CollectorRegistry()
    for name, value in ((contract.METRIC_STEP, 30), (contract.METRIC_TOTAL_STEPS, 120),
                        (contract.METRIC_TRAIN_LOSS, 1.75), (contract.METRIC_EVAL_LOSS, 1.9),
                        (contract.METRIC_TOKENS_PER_SECOND, 4096), (contract.METRIC_ETA_SECONDS, 600)):
        Gauge(name, name, registry=registry).set(value)
    server, thread = start_http_server(contract.METRICS_PORT, addr=pod_ip, registry=registry)
    try:
        st = wait_for("live progress", lambda: (lambda s: s.get("progress", {}).get("step") == 30 and s)(
            status(cluster, namespace, "live")), timeout=30)
    finally:
        server.shutdown()
    assert running["phase"] == "Running"
    assert st["progress"] == {"step": 30, "totalSteps": 120, "percent": 25, "etaSeconds": 600}
    assert st["metrics"]["trainLoss"] == 1.75 and st["metrics"]["tokensPerSecond"] == 4096
    assert "25" in cluster.kubectl("get", "ftj", "live", "-n", namespace).stdout
    # the operator's own metrics count it
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    assert f'kubetune_operator_finetunejobs{{namespace="{namespace}",phase="Running"}} 1.0' in text
    assert "kubetune_operator_time_to_running_seconds_count 1.0" in text
    health = urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5)
    assert health.status == 200


@pytest.mark.parametrize("notes, reason, pods", [
    (kwok(exit_code=137, reason="OOMKilled"), "OOMKilled", 1),
    (kwok(exit_code=64, message=json.dumps({"error": {"reason": "BadInput",
                                                      "message": "s3://d/train.jsonl line 7: not JSON"}})),
     "BadInput", 1),
    (kwok(exit_code=1), "BackoffLimitExceeded", 2),
])
def test_failures(cluster, namespace, operator, notes, reason, pods):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "fails", {"runPolicy": {"backoffLimit": 1}}, notes))
    cluster.kubectl("wait", "--for=condition=Failed", "ftj/fails", "-n", namespace, "--timeout=90s")
    st = status(cluster, namespace, "fails")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Failed"]["reason"] == reason and conds["Stalled"]["status"] == "True"
    if reason == "BadInput":
        assert "line 7" in conds["Failed"]["message"]
    # bad input and OOM fail at once (podFailurePolicy); other errors use the retries
    assert st["attempts"] == pods
    assert "Warning" in cluster.kubectl("get", "events", "-n", namespace).stdout


def test_unschedulable_is_reported(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "huge", {"resources": {"gpusPerNode": 16}, "hyperparameters": {"batchSize": 64}}))
    st = wait_for("Unschedulable", lambda: (lambda s: s.get("conditions") and {
        c["type"]: c for c in s["conditions"]}["Ready"]["reason"] == "Unschedulable" and s)(
        status(cluster, namespace, "huge")), timeout=30)
    assert st["phase"] == "Pending"
    assert "nvidia.com/gpu" in {c["type"]: c for c in st["conditions"]}["Reconciling"]["message"]


def test_suspend_and_resume_in_place(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "paused", {"suspend": True}, kwok(seconds=2)))
    wait_for("Suspended", phase_is(cluster, namespace, "paused", "Suspended"))
    [job] = jobs(cluster, namespace)
    assert job["spec"]["suspend"] is True
    assert not cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    run_id = status(cluster, namespace, "paused")["runId"]
    cluster.kubectl("patch", "ftj", "paused", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/paused", "-n", namespace, "--timeout=60s")
    [after] = jobs(cluster, namespace)
    assert after["metadata"]["uid"] == job["metadata"]["uid"]  # the same run went on
    st = status(cluster, namespace, "paused")
    assert st["runId"] == run_id and st["observedGeneration"] == 2 and st["runs"] == []


def test_kueue_queue_label_and_admission(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "queued", {"scheduling": {"queueName": "team-a"}}, kwok(seconds=2)))
    st = wait_for("Queued", phase_is(cluster, namespace, "queued", "Queued"))
    assert "team-a" in {c["type"]: c for c in st["conditions"]}["Suspended"]["message"]
    [job] = jobs(cluster, namespace)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    # Kueue admits a workload by unsuspending its Job; the operator must not suspend it again.
    cluster.kubectl("patch", "job", job["metadata"]["name"], "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"suspend":false}}')
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/queued", "-n", namespace, "--timeout=60s")


def test_spec_edit_starts_a_new_run_and_reapply_changes_nothing(cluster, namespace, operator):
    first = manifest("edit", annotations=kwok(seconds=60))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=first)
    wait_for("Running", phase_is(cluster, namespace, "edit", "Running"), timeout=30)
    old = status(cluster, namespace, "edit")
    edited = manifest("edit", {"hyperparameters": {"maxSteps": 20}}, kwok(seconds=1))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=edited)
    st = wait_for("the new run to succeed", lambda: (lambda s: s.get("phase") == "Succeeded"
                                                      and s.get("observedGeneration") == 2 and s)(
        status(cluster, namespace, "edit")))
    assert st["jobName"] == "edit-g2" and st["runId"] != old["runId"]
    [record] = st["runs"]
    assert (record["jobName"], record["generation"], record["reason"]) == ("edit-g1", 1, "SpecChanged")
    assert record["artifactsUri"].endswith(old["runId"]) and st["artifacts"]["uri"].endswith(st["runId"])
    wait_for("the old Job to go", lambda: [j["metadata"]["name"] for j in jobs(cluster, namespace)] == ["edit-g2"])
    assert "SpecChanged" in events(cluster, namespace, "edit")

    before = ftj(cluster, namespace, "edit")
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=edited).stdout
    assert "unchanged" in out

    time.sleep(3)  # several progress-timer periods
    after = ftj(cluster, namespace, "edit")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == ["edit-g2"]


def test_ttl_removes_children_and_keeps_the_outcome(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "short", {"runPolicy": {"ttlSecondsAfterFinished": 1}}, kwok(seconds=1)))
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/short", "-n", namespace, "--timeout=60s")
    wait_for("TTL cleanup", lambda: not jobs(cluster, namespace), timeout=30)
    wait_for("the ConfigMap to go", lambda: cluster.kubectl(
        "get", "configmap", "short-g1", "-n", namespace, check=False).returncode != 0, timeout=30)

    time.sleep(3)
    assert not jobs(cluster, namespace), "a finished run was started again after its Job's TTL"
    assert status(cluster, namespace, "short")["phase"] == "Succeeded"


def test_operator_restart_mid_run_makes_no_duplicate(cluster, namespace, operators):
    first = operators.start()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("steady", annotations=kwok(seconds=8)))
    wait_for("Running", phase_is(cluster, namespace, "steady", "Running"), timeout=30)
    [job] = jobs(cluster, namespace)
    first.stop(sig=9)  # no goodbye: the Lease has to expire
    operators.start()
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/steady", "-n", namespace, "--timeout=90s")
    [after] = jobs(cluster, namespace)
    assert after["metadata"]["uid"] == job["metadata"]["uid"]
    assert status(cluster, namespace, "steady")["attempts"] == 1


def test_two_replicas_one_active_and_failover(cluster, namespace, operators):
    leader = operators.start()
    wait_for("a leader", lambda: "leading as" in leader.output(), timeout=30)
    follower = operators.start()
    wait_for("the follower to wait", lambda: "waiting for leadership" in follower.output(), timeout=30)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("ha-1", annotations=kwok(seconds=1)))
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/ha-1", "-n", namespace, "--timeout=60s")
    assert "leading as" not in follower.output()
    lease = cluster.kubectl_json("get", "lease", operators.lease, "-n", "kubetune-system")
    assert lease["spec"]["holderIdentity"] == leader.identity
    leader.stop(sig=9)
    wait_for("failover", lambda: "leading as" in follower.output(), timeout=30)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("ha-2", annotations=kwok(seconds=1)))
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/ha-2", "-n", namespace, "--timeout=60s")


def test_delete_removes_children_not_artifacts(cluster, namespace, operator, s3):
    prefix = f"delete-keeps/{namespace}"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "gone", {"output": {"uri": f"s3://{cluster.bucket}/{prefix}/"}}, kwok(seconds=60)))
    running = wait_for("Running", phase_is(cluster, namespace, "gone", "Running"), timeout=30)
    # What a trainer has left under its run's prefix by now (kwok runs none): a checkpoint and its metrics.
    for key in ("checkpoints/step-00000040/COMPLETE", "checkpoints/step-00000040/state.pt", "metrics.jsonl"):
        s3.put_object(Bucket=cluster.bucket, Key=f"{prefix}/{running['runId']}/{key}", Body=key.encode())
    listed = lambda: {o["Key"]: o["ETag"] for o in  # noqa: E731
                      s3.list_objects_v2(Bucket=cluster.bucket, Prefix=f"{prefix}/").get("Contents", [])}
    artifacts = listed()
    cluster.kubectl("delete", "ftj", "gone", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for("children to go", lambda: not jobs(cluster, namespace) and not cluster.kubectl_json(
        "get", "configmaps", "-n", namespace, "-l", "kubetune.io/finetunejob=gone")["items"] and not
        cluster.kubectl_json("get", "pods", "-n", namespace)["items"], timeout=60)
    assert len(artifacts) == 3 and listed() == artifacts  # the run's checkpoints and metrics outlive the resource