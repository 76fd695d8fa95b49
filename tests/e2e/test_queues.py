"""Kueue's priority preemption of a real run on the real node: the deployed operator, real trainer containers,
checkpoints in MinIO. The ClusterQueue `kubetune` (hack/queues.py) gives the real node's flavor 2 CPUs, so two
runs asking 1200m each cannot both be admitted."""
import json

import pytest

from tests.e2e.conftest import E2E_NAMESPACE, wait_until

pytestmark = pytest.mark.cluster

QUEUE = "kubetune"  # the LocalQueue hack/cluster up makes in kubetune-e2e


@pytest.fixture
def priority_classes(cluster):
    names = {"low": 100, "high": 1000}
    for name, value in names.items():
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": f"kubetune-e2e-{name}"},
            "value": value, "description": "kubetune's Kueue preemption test"}))
    yield {name: f"kubetune-e2e-{name}" for name in names}
    for name in names:
        cluster.kubectl("delete", "priorityclass", f"kubetune-e2e-{name}", "--ignore-not-found", check=False)


def suspended(status: dict) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == "Suspended"), {})


def test_a_higher_priority_job_preempts_and_the_preempted_run_resumes_from_its_checkpoint(
        cluster, real_jobs, tiny_in_s3, priority_classes):
    def spec(priority: str, steps: int) -> dict:
        return real_jobs.spec(
            tiny_in_s3["model"], tiny_in_s3["data"], hyperparameters={"maxSteps": steps},
            evaluation={"everySteps": steps, "baseline": False}, checkpoint={"everySteps": 50},
            resources={"cpu": "1200m"},
            scheduling={"queueName": QUEUE, "priorityClassName": priority_classes[priority]})

    labels = cluster.kubectl_json("get", "namespace", E2E_NAMESPACE)["metadata"].get("labels") or {}
    assert labels.get("kueue.kubetune.io/managed") == "true", f"Kueue does not manage {E2E_NAMESPACE}: {labels}"
    real_jobs.apply("low", spec("low", 300))
    run_id = wait_until("the low run to start", lambda: real_jobs.status("low").get("phase") == "Running"
                        and real_jobs.status("low")["runId"], 300)
    wait_until("a complete checkpoint in S3", lambda: any(
        k.endswith("/COMPLETE") for k in real_jobs.objects(f"out/{run_id}/checkpoints/")), 300, interval=0.2)

    real_jobs.apply("high", spec("high", 60))
    # Kueue evicts the lower-priority Workload and suspends its Job; the FineTuneJob says why and where it waits.
    held = wait_until("low preempted", lambda: (s := real_jobs.status("low")).get("phase") == "Queued"
                      and suspended(s).get("reason") == "Preempted" and s, 120, interval=0.2)
    assert f"queue {QUEUE}" in suspended(held)["message"] and "checkpoint" in suspended(held)["message"]
    [workload] = [w for w in cluster.kubectl_json("get", "workloads", "-n", E2E_NAMESPACE)["items"]
                  if w["metadata"]["ownerReferences"][0]["name"] == held["jobName"]]
    assert any(c["type"] == "Evicted" and c["reason"] == "Preempted" for c in workload["status"]["conditions"])

    high = real_jobs.wait_phase("high", ("Succeeded", "Failed"))
    assert high["phase"] == "Succeeded", real_jobs.logs("high")
    low = real_jobs.wait_phase("low", ("Succeeded", "Failed"))
    assert low["phase"] == "Succeeded", real_jobs.logs("low")
    assert low["runId"] == run_id and low["progress"]["step"] == 300

    # Readmitted, the same run resumed from its last checkpoint instead of starting over.
    key = f"{real_jobs.prefix}/out/{run_id}/metrics.jsonl"
    rows = [json.loads(line) for line in
            real_jobs.s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read().decode().splitlines()]
    [resume] = [r for r in rows if r["kind"] == "resume"]
    assert 50 <= resume["step"] < 300, resume
    assert max(r["step"] for r in rows if r["kind"] == "train") == 300
