"""The operator's own verdicts and its status writes hold when the world moves under them (issue 20, items 5 and
7), on the real control plane with kwok's pods and real Kueue."""
import json
import re
import urllib.request

import pytest

from kubetune.operator.handlers import login
from kubetune.operator.kube import Connection, Kube
from kubetune.operator.reconcile import reconcile
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.sources import ApiSource
from tests.operator.conftest import manifest, wait_for
from tests.operator.test_kueue_cluster import queue  # noqa: F401  (fixture)
from tests.operator.test_operator_cluster import ftj, jobs, kwok, status

pytestmark = pytest.mark.cluster
OOM = kwok(exit_code=137, reason="OOMKilled")


def reconciles(operator) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    return int(float(re.search(r"^kubetune_operator_reconcile_duration_seconds_count (\S+)$", text, re.M)[1]))


def pods(cluster, namespace) -> list[dict]:
    return cluster.kubectl_json("get", "pods", "-n", namespace)["items"]


def assert_stays_failed_without_its_pod(cluster, namespace, operator, name: str) -> None:
    wait_for("Failed with OOMKilled", lambda: (lambda s: s.get("phase") == "Failed" and s)(
        status(cluster, namespace, name)), timeout=60)
    [job] = jobs(cluster, namespace)
    held = wait_for("the run's Job held", lambda: not pods(cluster, namespace) or all(
        p["status"].get("phase") == "Failed" for p in pods(cluster, namespace)))
    assert held
    cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=true")  # PodGC, a drain, a person
    wait_for("the Job controller to count the pod gone", lambda: not (cluster.kubectl_json(
        "get", "job", job["metadata"]["name"], "-n", namespace).get("status", {}).get("active")), timeout=60)
    # A change to the spec makes the operator reconcile it once more, with the pod long gone from its
    # view: a run it would release shows there (its queue may have folded the deletion's events into one).
    # Counted before the patch: its reconcile can end before a count read after the patch (CI, stop 30).
    after = reconciles(operator)
    cluster.kubectl("patch", "ftj", name, "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"runPolicy": {"ttlSecondsAfterFinished": 3600}}}')  # an in-place field
    try:
        wait_for("the operator to reconcile after the pod's deletion", lambda: reconciles(operator) > after,
                 timeout=60)
    except AssertionError:
        text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
        raise AssertionError("no reconcile: " + "\n".join(
            line for line in text.splitlines() if "workqueue" in line or "reconcile" in line)) from None
    st = status(cluster, namespace, name)
    failed = {c["type"]: c for c in st["conditions"]}["Failed"]
    assert (st["phase"], failed["status"], failed["reason"]) == ("Failed", "True", "OOMKilled"), st
    assert not pods(cluster, namespace), "a new trainer pod started for a run the status calls Failed"


def test_an_oom_killed_run_stays_failed_and_held_when_its_pod_is_deleted(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "oom", {"runPolicy": {"backoffLimit": 3}}, OOM))
    assert_stays_failed_without_its_pod(cluster, namespace, operator, "oom")
    [job] = jobs(cluster, namespace)
    assert job["spec"]["suspend"] is True


def test_under_kueue_an_oom_killed_run_stays_failed_when_its_pod_is_deleted(cluster, namespace, operator, queue):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "oom", {"runPolicy": {"backoffLimit": 3}, "scheduling": {"queueName": queue}}, OOM))
    assert_stays_failed_without_its_pod(cluster, namespace, operator, "oom")
    [workload] = cluster.kubectl_json("get", "workloads", "-n", namespace)["items"]
    assert workload["spec"].get("active") is False


def test_a_status_write_from_a_stale_copy_is_refused_and_planned_again(cluster, namespace, operators, monkeypatch):
    """Two writers (a deposed leader, a lagging index): the copy a status was computed from has been replaced;
    a blind merge patch would wipe what the other writer recorded (here: the record of an earlier run)."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("stale", annotations=kwok(seconds=60)))
    stale = ftj(cluster, namespace, "stale")
    earlier = {"generation": 7, "jobName": "stale-g7", "phase": "Succeeded", "reason": "Completed"}
    cluster.kubectl("patch", "ftj", "stale", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"runs": [earlier]}}))

    class StaleIndex(ApiSource):
        def finetunejob(self, namespace, name):
            return stale

    monkeypatch.setenv("KUBECONFIG", str(cluster.operator_kubeconfig))
    kube = Kube(Connection(login))
    reconcile(kube, OperatorSettings(namespaces=[namespace]), namespace, "stale", source=StaleIndex(kube))
    st = status(cluster, namespace, "stale")
    assert earlier in st["runs"], st


def test_a_queue_in_a_namespace_kueue_does_not_manage_is_a_warning_not_a_silent_wait(cluster, namespace,
                                                                                      operators):
    """No Workload ever comes (the namespace lacks Kueue's managedJobsNamespaceSelector label): the status says
    so, naming the cause, and a Warning event tells `kubectl describe` readers."""
    operators.start(KUEUE_WORKLOAD_TIMEOUT_SECONDS="3")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "unmanaged", {"scheduling": {"queueName": "team-a"}}, kwok(seconds=1)))
    suspended = wait_for("the NoWorkload reason", lambda: next(
        (c for c in status(cluster, namespace, "unmanaged").get("conditions") or []
         if c["type"] == "Suspended" and c["reason"] == "NoWorkload"), None), timeout=60)
    assert "managedJobsNamespaceSelector" in suspended["message"]
    assert status(cluster, namespace, "unmanaged")["phase"] == "Queued"
    events = wait_for("a Warning event", lambda: [
        e for e in cluster.kubectl_json("get", "events", "-n", namespace)["items"]
        if e["reason"] == "NoWorkload" and e["type"] == "Warning"])
    assert events[0]["involvedObject"]["name"] == "unmanaged"


def test_a_delete_with_the_observed_uid_spares_a_same_named_successor(cluster, namespace, operators, monkeypatch):
    """A delete planned from a stale view must not remove the object someone created under the name since."""
    def configmap(data: str) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "data": {"v": data}, "metadata": {
            "name": "spec", "namespace": namespace, "labels": {"kubetune.io/finetunejob": "x"}}})

    cluster.kubectl("apply", "-f", "-", input=configmap("old"))
    observed = cluster.kubectl_json("get", "configmap", "spec", "-n", namespace)["metadata"]["uid"]
    cluster.kubectl("delete", "configmap", "spec", "-n", namespace)
    cluster.kubectl("apply", "-f", "-", input=configmap("new"))
    monkeypatch.setenv("KUBECONFIG", str(cluster.operator_kubeconfig))
    Kube(Connection(login)).delete("ConfigMap", namespace, "spec", uid=observed)
    assert cluster.kubectl_json("get", "configmap", "spec", "-n", namespace)["data"] == {"v": "new"}


def test_a_run_applied_suspended_with_a_queue_starts_nothing_until_resumed(cluster, namespace, operator, queue):
    """Kueue admits a queued Job by unsuspending it: a Job made for a suspended run would start its pods before
    the operator could deactivate the Workload Kueue makes for it."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "later", {"suspend": True, "scheduling": {"queueName": queue}}, kwok(seconds=1)))
    wait_for("Suspended", lambda: status(cluster, namespace, "later").get("phase") == "Suspended")
    assert not jobs(cluster, namespace) and not pods(cluster, namespace)
    assert not cluster.kubectl_json("get", "workloads", "-n", namespace)["items"]
    cluster.kubectl("patch", "ftj", "later", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/later", "-n", namespace, "--timeout=120s")
