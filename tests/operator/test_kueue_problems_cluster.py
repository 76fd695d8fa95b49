"""Kueue problems named on the real control plane (issue 20, item 8): an API server that serves no Kueue
Workloads of our version (404), and an operator whose RBAC lacks them (403). Each must say so at once, with a
condition and a Warning event, instead of "waiting for admission" for good. (The unmanaged namespace is in
test_lost_evidence_cluster.py.)"""
import json

import pytest
import yaml

from kubetune.operator import kube as kube_module
from kubetune.operator.errors import RetryLater
from kubetune.operator.handlers import login
from kubetune.operator.kube import Connection, Kube
from kubetune.operator.reconcile import reconcile
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.sources import ApiSource
from tests.operator.conftest import manifest, wait_for
from tests.operator.test_kueue_cluster import MANAGED_LABEL
from tests.operator.test_operator_cluster import kwok, status

pytestmark = pytest.mark.cluster
OPERATOR_SA = ("kubetune-system", "kubetune-operator")


def suspended_reason(cluster, namespace: str, name: str, reason: str) -> dict | None:
    return next((c for c in status(cluster, namespace, name).get("conditions") or []
                 if c["type"] == "Suspended" and c["reason"] == reason), None)


def warning_events(cluster, namespace: str, reason: str) -> list[dict]:
    return [e for e in cluster.kubectl_json("get", "events", "-n", namespace)["items"]
            if e["reason"] == reason and e["type"] == "Warning"]


def test_an_api_server_without_our_kueue_version_is_named_at_once(cluster, namespace, finetunejob_crd, monkeypatch):
    """Kueue absent or serving another version: nothing admits the suspended Job (this namespace is not one Kueue
    manages), and the real API server answers 404 for the Workloads' path: the operator's own reconcile
    (in-process, the operator's ServiceAccount) is pointed at a version nobody serves."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "absent", {"scheduling": {"queueName": "team-a"}}, kwok(seconds=1)))
    monkeypatch.setitem(kube_module.RESOURCES, "Workload", ("/apis/kueue.x-k8s.io/v1alpha0", "workloads"))
    monkeypatch.setenv("KUBECONFIG", str(cluster.operator_kubeconfig))
    kube = Kube(Connection(login))
    settings = OperatorSettings(namespaces=[namespace])
    source = ApiSource(kube)
    # The first reconcile creates the (suspended, queued) Job; the next ones look for its Workload.
    for _ in range(3):
        try:
            reconcile(kube, settings, namespace, "absent", source=source)
        except RetryLater:  # Kueue holds the run: looked at again later
            pass
        if suspended_reason(cluster, namespace, "absent", "KueueUnavailable"):
            break
    condition = suspended_reason(cluster, namespace, "absent", "KueueUnavailable")
    assert condition, status(cluster, namespace, "absent")
    assert "serves no kueue.x-k8s.io/v1beta2 Workloads" in condition["message"]
    assert warning_events(cluster, namespace, "KueueUnavailable")


def restricted_operator_kubeconfig(cluster, account: str, namespace: str, tmp_path):
    """A ServiceAccount bound to a copy of every role the operator's is bound to (the chart's, the tests' extra
    rules, the Lease's), less the Kueue rules; returns its token's kubeconfig and what was created. Waits until
    the API server's authorizer has the new bindings: it caches RBAC, and an operator started before that cannot
    even take its Lease."""
    ns, sa = OPERATOR_SA
    items = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": ns}}]
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": ns}]
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for binding in cluster.kubectl_json("get", kind.lower(), "-A")["items"]:
            if not any(s.get("kind") == "ServiceAccount" and (s.get("namespace"), s.get("name")) == (ns, sa)
                       for s in binding.get("subjects") or []):
                continue
            ref, where = binding["roleRef"], binding["metadata"].get("namespace")
            role = cluster.kubectl_json("get", ref["kind"].lower(), ref["name"], *(["-n", where] if where else []))
            meta = {"name": f"{account}-{ref['name']}", **({"namespace": where} if where else {})}
            rules = [r for r in role.get("rules") or [] if "kueue.x-k8s.io" not in r.get("apiGroups", [])]
            items.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": ref["kind"], "metadata": meta,
                          "rules": rules})
            items.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
                          "roleRef": {**ref, "name": meta["name"]}, "subjects": subject})
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    user = f"system:serviceaccount:{ns}:{account}"

    def can(*args: str) -> bool:
        return cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False).stdout.strip() == "yes"

    wait_for("the restricted account's rights in the authorizer", lambda: can(
        "update", "leases", "-n", ns) and can("create", "jobs", "-n", namespace) and can(
        "patch", "finetunejobs", "--subresource=status", "-n", namespace) and not can(
        "list", "workloads.kueue.x-k8s.io", "-n", namespace))
    config = yaml.safe_load(cluster.operator_kubeconfig.read_text())
    config["users"][0]["user"] = {"token": cluster.kubectl("create", "token", account, "-n", ns).stdout.strip()}
    path = tmp_path / f"{account}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path, items


def test_an_operator_that_may_not_read_workloads_says_so(cluster, namespace, operators, tmp_path):
    """RBAC without `list workloads.kueue.x-k8s.io` (a hand-made install, a trimmed ClusterRole): the status names
    the missing permission at once, with a Warning event, instead of "waiting for admission" forever. The queue
    points at a ClusterQueue nobody made, so Kueue holds the Job and the operator must look at its Workload (a run
    Kueue admits at once never needs to)."""
    cluster.kubectl("label", "namespace", namespace, f"{MANAGED_LABEL}=true")
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "nowhere",
        "namespace": namespace}, "spec": {"clusterQueue": "kubetune-test-absent"}}))
    kubeconfig, created = restricted_operator_kubeconfig(cluster, "kubetune-test-no-kueue", namespace, tmp_path)
    try:
        operator = operators.start(kubeconfig=kubeconfig)

        def leads() -> bool:
            assert operator.proc.poll() is None, f"the restricted operator exited:\n{operator.output()[-3000:]}"
            return "leading as" in operator.output()

        wait_for("the restricted operator to lead", leads, timeout=60)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
            "blind", {"scheduling": {"queueName": "nowhere"}}, kwok(seconds=1)))
        try:
            condition = wait_for("the KueueForbidden reason", lambda: suspended_reason(
                cluster, namespace, "blind", "KueueForbidden"), timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstatus: {status(cluster, namespace, 'blind')}\n"
                                 f"{operator.output()[-3000:]}") from None
        assert "may not list Kueue Workloads" in condition["message"]
        wait_for("a Warning event", lambda: warning_events(cluster, namespace, "KueueForbidden"))
    finally:
        operators.stop_all()
        cluster.kubectl("delete", "finetunejobs", "--all", "-n", namespace, "--timeout=60s", check=False)
        for item in reversed(created):
            meta = item["metadata"]
            cluster.kubectl("delete", item["kind"].lower(), meta["name"],
                            *(["-n", meta["namespace"]] if meta.get("namespace") else []), "--ignore-not-found",
                            check=False)
