"""A user's path on the real node: kubectl apply → a trainer container trains → live status → Succeeded with the
baseline comparison → artifacts in MinIO → metrics in Prometheus; preemption resumes from the S3 checkpoint."""
import json
import urllib.parse
import urllib.request

import pytest

from tests.e2e.conftest import E2E_NAMESPACE, wait_until

pytestmark = pytest.mark.cluster


def failure(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "Failed")


def prometheus(cluster, query: str) -> list[dict]:
    url = f"{cluster.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_apply_trains_in_a_container_on_the_real_node(cluster, real_jobs, tiny_in_s3):
    spec = real_jobs.spec(tiny_in_s3["model"], tiny_in_s3["data"],
                          hyperparameters={"maxSteps": 400}, evaluation={"everySteps": 100},
                          checkpoint={"everySteps": 200})
    real_jobs.apply("chat", spec)

    # A real container on the real node, in a namespace that enforces the restricted PodSecurity profile.
    pod = wait_until("a running trainer container", lambda: next(
        (p for p in real_jobs.pods("chat") if any("running" in c.get("state", {})
                                                   for c in p["status"].get("containerStatuses", []))), None), 300)
    assert pod["spec"]["nodeName"] == cluster.real_node
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    assert pod["spec"]["serviceAccountName"] == "kubetune-trainer"  # the chart's, for cloud identity; no token
    assert not any(v.get("projected") for v in pod["spec"]["volumes"])
    namespace = cluster.kubectl_json("get", "namespace", E2E_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    # Live progress on the resource while it trains, read by the operator from the pod's metrics endpoint.
    live = wait_until("live progress in status", lambda: (
        (s := real_jobs.status("chat")).get("phase") == "Running" and (s.get("progress") or {}).get("step")
        and s), 300, interval=0.3)
    assert 0 < live["progress"]["step"] <= 400 and live["progress"]["totalSteps"] == 400

    done = real_jobs.wait_phase("chat", ("Succeeded", "Failed"))
    assert done["phase"] == "Succeeded", (done, real_jobs.logs("chat"))
    assert done["progress"]["step"] == 400 and done["stopReason"] == "MaxStepsReached"
    [comparison] = [c for c in done["metrics"]["comparisons"] if c["against"] == "baseModel"]
    assert comparison["metric"] == "loss" and comparison["fineTuned"] < comparison["baseline"]
    assert comparison["excludesZero"] and comparison["high"] < 0

    run_id = done["runId"]
    keys = real_jobs.objects(f"out/{run_id}/")
    for name in ("summary.json", "metrics.jsonl", "report.html", "model/adapter_model.safetensors",
                 "model/adapter_config.json"):
        assert f"{real_jobs.prefix}/out/{run_id}/{name}" in keys, (name, keys)
    assert done["artifacts"]["uri"] == f"s3://{cluster.bucket}/{real_jobs.prefix}/out/{run_id}"

    # Prometheus discovered the trainer pod through the API server and scraped it while it ran.
    series = wait_until("the trainer's series in Prometheus", lambda: prometheus(
        cluster, f'max_over_time(kubetune_train_step{{namespace="{E2E_NAMESPACE}",finetunejob="chat"}}[15m])'), 30)
    assert 0 < float(series[0]["value"][1]) <= 400


def test_a_deleted_pod_resumes_from_its_s3_checkpoint(cluster, real_jobs, tiny_in_s3):
    """The same spec twice: one uninterrupted, one whose pod is deleted after a checkpoint. The Job's next pod
    resumes from S3 and ends at the same step with the same losses."""
    spec = real_jobs.spec(tiny_in_s3["model"], tiny_in_s3["data"], hyperparameters={"maxSteps": 600},
                          evaluation={"everySteps": 200, "baseline": False}, checkpoint={"everySteps": 100})
    real_jobs.apply("steady", spec)
    real_jobs.apply("preempted", spec)

    run_id = wait_until("a run id", lambda: real_jobs.status("preempted").get("runId"), 120)
    wait_until("a complete checkpoint in S3", lambda: any(
        k.endswith("/COMPLETE") for k in real_jobs.objects(f"out/{run_id}/checkpoints/")), 300, interval=0.2)
    [victim] = [p for p in real_jobs.pods("preempted") if p["status"].get("phase") == "Running"]
    cluster.kubectl("delete", "pod", "-n", E2E_NAMESPACE, victim["metadata"]["name"], "--wait=false")

    steady = real_jobs.wait_phase("steady", ("Succeeded", "Failed"))
    resumed = real_jobs.wait_phase("preempted", ("Succeeded", "Failed"))
    assert steady["phase"] == "Succeeded", real_jobs.logs("steady")
    assert resumed["phase"] == "Succeeded", real_jobs.logs("preempted")
    assert resumed["progress"]["step"] == steady["progress"]["step"] == 600

    rows = {}
    for name, status in (("steady", steady), ("preempted", resumed)):
        key = f"{real_jobs.prefix}/out/{status['runId']}/metrics.jsonl"
        body = real_jobs.s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read().decode()
        rows[name] = [json.loads(line) for line in body.splitlines()]
    [resume] = [r for r in rows["preempted"] if r["kind"] == "resume"]
    assert 100 <= resume["step"] < 600
    # Resume restores weights, optimizer, scheduler, RNG and data position: the same per-step losses and the same
    # final validation loss as the uninterrupted run, up to float noise (1e-4 relative).
    losses = {name: {r["step"]: r["loss"] for r in rs if r["kind"] == "train"} for name, rs in rows.items()}
    assert losses["steady"].keys() == losses["preempted"].keys() and max(losses["steady"]) == 600
    for step, loss in losses["steady"].items():
        assert abs(loss - losses["preempted"][step]) <= 1e-4 * max(1.0, abs(loss)), (step, loss)
    a, b = steady["metrics"]["evalLoss"], resumed["metrics"]["evalLoss"]
    assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (a, b)

    # The deleted pod is gone from the API; the Job and the status remember it.
    [job] = cluster.kubectl_json("get", "jobs", "-n", E2E_NAMESPACE, "-l", "kubetune.io/finetunejob=preempted")["items"]
    counts = (resumed["attempts"], resumed["restarts"], job["status"].get("failed"), job["status"].get("succeeded"))
    assert counts == (2, 1, 1, 1), counts


def test_bad_data_fails_once_with_file_and_line_and_writes_nothing(cluster, real_jobs, tiny_in_s3, tmp_path):
    bad = tmp_path / "train.jsonl"
    rows = [json.dumps(r) for r in (json.loads(line) for line in
            real_jobs.s3.get_object(Bucket=cluster.bucket, Key=tiny_in_s3["data"]["train"].split("/", 3)[3])
            ["Body"].read().decode().splitlines()[:20])]
    rows.insert(6, '{"messages": [{"role": "user", "content": "unterminated')
    bad.write_text("\n".join(rows) + "\n")
    train = real_jobs.upload(bad, "bad/train.jsonl")
    real_jobs.apply("bad-data", real_jobs.spec(tiny_in_s3["model"], {"train": train}, evaluation=None))

    failed = real_jobs.wait_phase("bad-data", ("Succeeded", "Failed"), 300)
    assert failed["phase"] == "Failed" and failure(failed)["reason"] == "BadInput", failed
    message = failure(failed)["message"]
    assert "train.jsonl line 7" in message, message
    assert len(real_jobs.pods("bad-data")) == 1 and failed["attempts"] == 1  # not retried
    assert real_jobs.objects("out/") == []


def test_a_wrong_s3_key_fails_naming_bucket_and_key_id_never_the_secret(cluster, real_jobs, tiny_in_s3):
    wrong_secret = "not-the-secret-" + "x" * 16
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-wrong", "namespace": E2E_NAMESPACE},
              "stringData": {"AWS_ACCESS_KEY_ID": cluster.s3_access_key, "AWS_SECRET_ACCESS_KEY": wrong_secret}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))
    real_jobs.apply("wrong-key", real_jobs.spec(tiny_in_s3["model"], tiny_in_s3["data"],
                                                storage={"secretRef": {"name": "s3-wrong"}}))

    failed = real_jobs.wait_phase("wrong-key", ("Succeeded", "Failed"), 300)
    assert failed["phase"] == "Failed" and failure(failed)["reason"] == "BadInput", failed
    message = failure(failed)["message"]
    assert cluster.bucket in message and cluster.s3_access_key in message, message
    everything = json.dumps(real_jobs.get("wrong-key")) + real_jobs.logs("wrong-key") + cluster.kubectl(
        "get", "events", "-n", E2E_NAMESPACE, "-o", "json").stdout
    assert wrong_secret not in everything and cluster.s3_secret_key not in everything
    assert real_jobs.objects("out/") == []
