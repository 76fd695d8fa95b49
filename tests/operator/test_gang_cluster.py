"""Multi-node runs restart as a gang (issue 16, item 3), on the local control plane with kwok GPU nodes.

kwok plays the kubelet: its pods run until `kwok.kubetune.io/run-seconds` and a deleted one stops a second
later, so a test ends one index itself by writing the pod's terminal status, as the kubelet would when the trainer
exits."""
import json
import time

import pytest

from tests.operator.conftest import manifest, wait_for
from tests.operator.test_kueue_cluster import queue  # noqa: F401  (fixture: a LocalQueue on the real Kueue)
from tests.operator.test_operator_cluster import jobs, kwok, status

pytestmark = pytest.mark.cluster
RESTART_WITHIN = 30  # seconds from one index's end to every pod of the next attempt Running (measured: ~2 s)


@pytest.fixture(autouse=True)
def gpus_given_back(cluster, namespace):
    """The test's pods go before the next test starts (8-GPU gangs need whole kwok nodes), without waiting for
    the namespace's deletion, which comes after the operator has stopped."""
    yield
    cluster.kubectl("delete", "finetunejobs", "--all", "-n", namespace, "--timeout=60s")
    wait_for("the test's pods to go", lambda: not cluster.kubectl_json("get", "pods", "-n", namespace)["items"],
             timeout=60)


def gang(name: str, backoff_limit: int = 3) -> str:
    """Two nodes of one GPU each (the kwok nodes have 24 in all, and other tests' pods may hold some)."""
    spec = {"nodes": 2, "resources": {"gpusPerNode": 1}, "hyperparameters": {"batchSize": 8, "microBatchSize": 4},
            "runPolicy": {"backoffLimit": backoff_limit}}
    return manifest(name, spec, kwok(seconds=600))


def pods(cluster, namespace, job_name: str) -> list[dict]:
    return cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={job_name}")["items"]


def all_running(cluster, namespace, job_name: str, count: int = 2):
    def probe():
        found = pods(cluster, namespace, job_name)
        running = [p for p in found if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
        return len(running) == count and running
    return probe


def index(found: list[dict], i: int) -> dict:
    return next(p for p in found if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == str(i))


def end(cluster, namespace, pod: dict, exit_code: int) -> None:
    """The pod's trainer exits with `exit_code`, as the kubelet reports it."""
    terminated = {"exitCode": exit_code, "reason": "Error", "startedAt": pod["status"]["startTime"],
                  "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    body = {"status": {"phase": "Failed", "containerStatuses": [{
        "name": "trainer", "image": pod["spec"]["containers"][0]["image"], "imageID": "", "ready": False,
        "restartCount": 0, "state": {"terminated": terminated}}]}}
    cluster.kubectl("patch", "pod", pod["metadata"]["name"], "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", json.dumps(body))


def run_id_of(k8s_job: dict) -> str:
    env = k8s_job["spec"]["template"]["spec"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == "KUBETUNE_RUN_ID")


def job_names(cluster, namespace) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs(cluster, namespace) if not j["metadata"].get("deletionTimestamp"))


def test_one_killed_index_restarts_the_whole_gang_and_failures_are_counted(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gang("pair", backoff_limit=1))
    first = wait_for("both pods of attempt 1 Running", all_running(cluster, namespace, "pair-g1"), timeout=60)
    [job1] = jobs(cluster, namespace)
    assert job1["spec"]["backoffLimit"] == 0
    st = wait_for("Running", lambda: (lambda s: s.get("phase") == "Running" and s)(status(cluster, namespace, "pair")))
    assert (st["attempts"], st["restarts"], st["failures"]) == (1, 0, 0)

    started = time.monotonic()
    end(cluster, namespace, index(first, 1), exit_code=1)  # one index dies mid-run (torchrun exits 1)
    second = wait_for("the whole gang replaced", all_running(cluster, namespace, "pair-g1-a2"), timeout=RESTART_WITHIN)
    elapsed = time.monotonic() - started
    print(f"gang restart (kill -> every pod of attempt 2 Running): {elapsed:.1f} s")
    wait_for("attempt 1 gone", lambda: job_names(cluster, namespace) == ["pair-g1-a2"], timeout=30)
    assert not pods(cluster, namespace, "pair-g1"), "a pod of the ended attempt is still there"
    [job2] = jobs(cluster, namespace)
    assert run_id_of(job2) == run_id_of(job1) == st["runId"]  # the same run: it resumes from its checkpoint
    assert {p["metadata"]["uid"] for p in second}.isdisjoint(p["metadata"]["uid"] for p in first)
    st = wait_for("the status of attempt 2", lambda: (lambda s: s.get("jobName") == "pair-g1-a2" and s.get(
        "phase") == "Running" and s.get("conditions")[0]["reason"] == "Running" and s)(status(cluster, namespace, "pair")))
    assert (st["attempts"], st["restarts"], st["failures"], st["runId"]) == (2, 1, 1, run_id_of(job1))
    header, row = cluster.kubectl("get", "ftj", "pair", "-n", namespace, "-o", "wide").stdout.splitlines()
    at = header.index("RESTARTS")
    assert row[at:at + len("RESTARTS")].strip() == "1" and row.split()[1] == "Running"

    end(cluster, namespace, index(second, 0), exit_code=1)  # a second failure: more than backoffLimit 1
    cluster.kubectl("wait", "--for=condition=Failed", "ftj/pair", "-n", namespace, "--timeout=30s")
    st = status(cluster, namespace, "pair")
    failed = {c["type"]: c for c in st["conditions"]}["Failed"]
    assert failed["reason"] == "BackoffLimitExceeded" and "exceed runPolicy.backoffLimit 1" in failed["message"]
    assert (st["attempts"], st["failures"]) == (2, 2)
    time.sleep(3)
    assert job_names(cluster, namespace) == ["pair-g1-a2"]  # no third attempt


def test_a_disruption_restarts_the_gang_without_counting(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gang("evicted", backoff_limit=0))
    first = wait_for("attempt 1 Running", all_running(cluster, namespace, "evicted-g1"), timeout=60)
    victim = index(first, 0)
    name = victim["metadata"]["name"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
    cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", "-f", "-",
                    input=json.dumps(eviction))  # the API server marks it DisruptionTarget and deletes it
    # kwok, as the kubelet, ends it with 143 a second later (hack/kwok/stages.yaml: pod-stop)
    wait_for("attempt 2 Running", all_running(cluster, namespace, "evicted-g1-a2"), timeout=RESTART_WITHIN)
    st = wait_for("the status of attempt 2", lambda: (lambda s: s.get("jobName") == "evicted-g1-a2" and s)(
        status(cluster, namespace, "evicted")))
    # backoffLimit 0 allows no failure at all: the eviction was not counted
    assert (st["phase"], st["attempts"], st["restarts"], st["failures"]) == ("Running", 2, 1, 0)
    [job2] = jobs(cluster, namespace)
    assert "DisruptionTarget" in job2["metadata"]["annotations"]["kubetune.io/restart-reason"]


def test_exit_64_on_one_index_fails_the_run_at_once(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gang("bad"))
    first = wait_for("attempt 1 Running", all_running(cluster, namespace, "bad-g1"), timeout=60)
    end(cluster, namespace, index(first, 1), exit_code=64)
    cluster.kubectl("wait", "--for=condition=Failed", "ftj/bad", "-n", namespace, "--timeout=30s")
    st = status(cluster, namespace, "bad")
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["Failed"]["reason"] == "BadInput" and conditions["Stalled"]["status"] == "True"
    assert (st["attempts"], st["failures"]) == (1, 0)
    time.sleep(3)
    assert job_names(cluster, namespace) == ["bad-g1"]  # never retried


def test_kueue_admits_each_attempt_of_a_gang_as_one_workload(cluster, namespace, queue):
    """All pods or none: a gang over the ClusterQueue's 16 GPUs gets no pod at all; one that fits is one Workload,
    and its next attempt is admitted again as a whole once the ended one has given the quota back."""
    def on_gpus(nodes: int) -> dict:
        return {"nodes": nodes, "resources": {"gpusPerNode": 8},
                "hyperparameters": {"batchSize": 32 * nodes, "microBatchSize": 4}, "scheduling": {"queueName": queue}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("wide", on_gpus(3), kwok(seconds=600)))
    wait_for("the 24-GPU gang Queued", lambda: status(cluster, namespace, "wide").get("phase") == "Queued", timeout=30)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("pair", on_gpus(2), kwok(seconds=600)))
    first = wait_for("attempt 1 admitted and Running", all_running(cluster, namespace, "pair-g1"), timeout=60)
    [workload] = [w for w in cluster.kubectl_json("get", "workloads", "-n", namespace)["items"]
                  if w["metadata"]["ownerReferences"][0]["name"] == "pair-g1"]
    assert [p["count"] for p in workload["spec"]["podSets"]] == [2]
    assert not pods(cluster, namespace, "wide-g1") and status(cluster, namespace, "wide")["phase"] == "Queued"

    end(cluster, namespace, index(first, 0), exit_code=1)
    wait_for("attempt 2 admitted and Running", all_running(cluster, namespace, "pair-g1-a2"), timeout=60)
    st = wait_for("attempt 2 in the status", lambda: (lambda s: s.get("jobName") == "pair-g1-a2" and s.get(
        "phase") == "Running" and s)(status(cluster, namespace, "pair")))
    assert (st["attempts"], st["failures"]) == (2, 1)
    assert not pods(cluster, namespace, "wide-g1")  # the 3-node gang never got a partial start
