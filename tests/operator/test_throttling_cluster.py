"""The operator under API Priority and Fairness throttling (issue 20, "Throttling"): a FlowSchema starves its
ServiceAccount (one seat, excess rejected with 429) while a hundred FineTuneJobs arrive. It must honour the
server's Retry-After, keep its Lease (the chart's FlowSchema sends Lease requests to the `leader-election`
priority level), never call a run Stalled for it, and still run every job."""
import json
import os
import re
import threading
import urllib.request

import pytest

from kubetune.operator.errors import ApiError
from kubetune.operator.handlers import login
from kubetune.operator.kube import Connection, Kube
from tests.operator.conftest import manifest, wait_for
from tests.operator.test_operator_cluster import kwok

pytestmark = pytest.mark.cluster
# 100 in `make test` (about a minute); the 1,000 run by hand with KUBETUNE_TEST_THROTTLED_JOBS=1000 (about
# ten minutes on this machine, numbers in docs/operator-scale.md).
JOBS = int(os.environ.get("KUBETUNE_TEST_THROTTLED_JOBS", "100"))
STARVED = "kubetune-test-starved"


def starve(cluster, service_account: str, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
         "metadata": {"name": STARVED},
         "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 1, "lendablePercent": 0,
                                                 "limitResponse": {"type": "Reject"}}}},
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": STARVED},
         "spec": {"priorityLevelConfiguration": {"name": STARVED}, "matchingPrecedence": 300,
                  "distinguisherMethod": {"type": "ByUser"},
                  "rules": [{"subjects": [{"kind": "ServiceAccount", "serviceAccount": {
                      "name": service_account, "namespace": namespace}}],
                      "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                         "namespaces": ["*"], "clusterScope": True}]}]}}]}))


def metric(operator, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


class Crowd:
    """Other clients with the operator's identity (a person's kubectl, a second tool under the same account) in
    the starved level's few seats, until the operator has been throttled `enough` times: a hundred kwok jobs alone
    do not always exceed the seats (a CI run saw no 429 at all), and a test that was never throttled proves
    nothing."""

    def __init__(self, operator, namespace: str, clients: int = 6, enough: int = 20):
        self.kube = Kube(Connection(login, connections=clients), throttle_retries=0)
        self.operator, self.namespace, self.enough = operator, namespace, enough
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        while not self.stopped.is_set():
            try:
                self.kube.get(f"/api/v1/namespaces/{self.namespace}/configmaps")
            except (ApiError, OSError):  # a 429 of our own is the point
                pass

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def throttled_enough(self) -> bool:
        if metric(self.operator, "kubetune_operator_api_throttled_total") >= self.enough:
            self.stopped.set()
        return self.stopped.is_set()

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(30)


def test_a_throttled_operator_keeps_its_lease_and_runs_every_job(cluster, namespace, operators, monkeypatch):
    starve(cluster, "kubetune-operator", "kubetune-system")
    monkeypatch.setenv("KUBECONFIG", str(cluster.operator_kubeconfig))  # the crowd's identity is the operator's
    try:
        operator = operators.start(WORKERS="20", RETRY_DELAY_SECONDS="1")
        wait_for("the operator to lead", lambda: "leading as" in operator.output(), timeout=60)
        stalled: set[str] = set()
        with Crowd(operator, namespace) as crowd:
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(
                manifest(f"t-{i}", annotations=kwok(seconds=1)) for i in range(JOBS)))

            def done() -> bool:
                items = cluster.kubectl_json("get", "ftj", "-n", namespace)["items"]
                stalled.update(o["metadata"]["name"] for o in items for c in (o.get("status") or {}).get(
                    "conditions") or [] if c["type"] == "Stalled" and c["status"] == "True")
                assert operator.proc.poll() is None, f"the operator exited:\n{operator.output()[-3000:]}"
                crowd.throttled_enough()
                return sum((o.get("status") or {}).get("phase") == "Succeeded" for o in items) == JOBS

            wait_for(f"all {JOBS} jobs Succeeded", done, timeout=max(300, JOBS * 1.2), interval=2)
        assert metric(operator, "kubetune_operator_api_throttled_total") > 0, "never throttled: proved nothing"
        assert "lost leadership" not in operator.output()
        assert not stalled, f"Stalled while only throttled: {sorted(stalled)[:5]}"
    finally:
        cluster.kubectl("delete", "flowschema,prioritylevelconfiguration", STARVED, "--ignore-not-found")
