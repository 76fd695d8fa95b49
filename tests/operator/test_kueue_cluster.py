"""Real Kueue (hack/queues.py: ClusterQueue `kubetune`, 16 GPUs on the kwok GPU flavor) admitting FineTuneJobs
that the operator runs; kwok plays the trainer pods. The simulated Kueue of test_operator_cluster.py stays for
the operator's side of the contract alone."""
import json
import time

import pytest

from tests.operator.conftest import manifest, wait_for
from tests.operator.test_operator_cluster import jobs, kwok, phase_is, status

pytestmark = pytest.mark.cluster

MANAGED_LABEL, CLUSTER_QUEUE = "kueue.kubetune.io/managed", "kubetune"


@pytest.fixture
def queue(cluster, namespace, operator):
    """The test's namespace opted in to Kueue, with a LocalQueue on the cluster's ClusterQueue. Afterwards its
    FineTuneJobs go while the operator still runs, and their Workloads with them: the ClusterQueue's quota is
    the whole cluster's, so a test must not leave admitted Workloads to a slow namespace deletion."""
    found = cluster.kubectl("get", "clusterqueue", CLUSTER_QUEUE, check=False)
    assert found.returncode == 0, f"no Kueue ClusterQueue {CLUSTER_QUEUE}: hack/cluster up without KUBETUNE_KUEUE=0"
    cluster.kubectl("label", "namespace", namespace, f"{MANAGED_LABEL}=true")
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
        "metadata": {"name": "team-a", "namespace": namespace}, "spec": {"clusterQueue": CLUSTER_QUEUE}}))
    yield "team-a"
    cluster.kubectl("delete", "finetunejobs", "--all", "-n", namespace, "--timeout=60s")
    wait_for("the test's Workloads to go", lambda: not cluster.kubectl_json(
        "get", "workloads", "-n", namespace)["items"], timeout=60)


def changed_fields(before: dict, after: dict, path: str = "") -> list[str]:
    """Where two versions of an object differ (managedFields aside): who changed what."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [f for key in sorted(set(before) | set(after)) if key not in ("managedFields", "resourceVersion")
                for f in changed_fields(before.get(key), after.get(key), f"{path}.{key}")]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def condition(st: dict, kind: str) -> dict:
    return next(c for c in st["conditions"] if c["type"] == kind)


def test_over_the_gpu_quota_the_third_job_waits_queued_until_the_first_finishes(cluster, namespace, queue):
    on_gpus = {"resources": {"gpusPerNode": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
               "hyperparameters": {"batchSize": 64, "microBatchSize": 8}, "scheduling": {"queueName": queue}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("first", on_gpus, kwok(seconds=20)))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("second", on_gpus, kwok(seconds=120)))
    for name in ("first", "second"):
        wait_for(f"{name} Running", phase_is(cluster, namespace, name, "Running"), timeout=60)
    # 16 of the queue's 16 GPUs are in use (the nodes have 24): Kueue holds the third, not the scheduler.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("third", on_gpus, kwok(seconds=1)))
    st = wait_for("third Queued with Kueue's reason", lambda: (
        (s := status(cluster, namespace, "third")).get("phase") == "Queued"
        and "insufficient" in condition(s, "Suspended")["message"] and s), timeout=30)
    held = condition(st, "Suspended")
    assert held["status"] == "True" and held["reason"] == "Queued"
    assert f"Kueue queue {queue}" in held["message"] and "nvidia.com/gpu" in held["message"], held
    assert status(cluster, namespace, "first")["phase"] == "Running"

    # Admission: Kueue unsuspended the first two and put the flavor's node labels on their pod templates; the
    # operator's in-place patches left them as Kueue set them.
    admitted = {j["metadata"]["name"]: j for j in jobs(cluster, namespace)}
    for name in ("first-g1", "second-g1"):
        spec = admitted[name]["spec"]
        assert spec["suspend"] is False
        selector = spec["template"]["spec"]["nodeSelector"]
        assert selector["type"] == "kwok" and selector["nvidia.com/gpu.present"] == "true", selector
        assert selector["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"  # the spec's, kept beside them
    assert admitted["third-g1"]["spec"]["suspend"] is True

    # The first finishes and frees 8 GPUs; the third starts while the second still runs.
    wait_for("third Running", lambda: status(cluster, namespace, "third").get("phase") in ("Running", "Succeeded"),
             timeout=60)
    assert status(cluster, namespace, "first")["phase"] == "Succeeded"
    assert status(cluster, namespace, "second")["phase"] == "Running"
    wait_for("third Succeeded", phase_is(cluster, namespace, "third", "Succeeded"), timeout=60)
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "kubetune.io/finetunejob=third")["items"]
    assert all(p["spec"]["nodeName"].startswith("gpu-node-") for p in pods), pods


def test_a_missing_local_queue_is_inadmissible_and_says_so(cluster, namespace, queue):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "lost", {"scheduling": {"queueName": "no-such-queue"}}, kwok(seconds=1)))
    st = wait_for("Queued as inadmissible", lambda: (
        (s := status(cluster, namespace, "lost")).get("phase") == "Queued"
        and condition(s, "Suspended")["reason"] == "Inadmissible" and s), timeout=30)
    assert "no-such-queue" in condition(st, "Suspended")["message"]
    [job] = jobs(cluster, namespace)
    assert job["spec"]["suspend"] is True


def test_spec_suspend_of_an_admitted_run_goes_through_kueue_without_a_fight(cluster, namespace, queue):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "pause", {"scheduling": {"queueName": queue}}, kwok(seconds=300)))
    wait_for("Running", phase_is(cluster, namespace, "pause", "Running"), timeout=60)
    cluster.kubectl("patch", "ftj", "pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for("Suspended", phase_is(cluster, namespace, "pause", "Suspended"), timeout=30)
    [workload] = cluster.kubectl_json("get", "workloads", "-n", namespace)["items"]
    assert workload["spec"]["active"] is False  # the operator deactivated it; Kueue evicted it and suspended the Job
    # Stays suspended: Kueue does not restart it and the operator does not fight Kueue over the Job. (Once the
    # Job controller has counted its pod gone: until then it updates the Job's status itself.)
    before = wait_for("the suspended Job to count no pod", lambda: (
        (j := jobs(cluster, namespace)[0])["status"].get("active", 0) == 0
        and j["status"].get("terminating", 0) == 0 and j), timeout=30)
    for _ in range(10):
        [job] = jobs(cluster, namespace)
        assert job["spec"]["suspend"] is True
        time.sleep(0.5)
    assert job["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], (
        "the Job kept changing while suspended", changed_fields(before, job))
    cluster.kubectl("patch", "ftj", "pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for("Running again", phase_is(cluster, namespace, "pause", "Running"), timeout=60)
    [workload] = cluster.kubectl_json("get", "workloads", "-n", namespace)["items"]
    assert workload["spec"]["active"] is True
