"""helm install, upgrade and uninstall of charts/kubetune on the local cluster, asserted on the API objects.

The operator's pods land on kwok nodes (nothing runs), so this checks what the chart puts in the cluster: the
Deployment and its pods admitted under PodSecurity `restricted`, namespaced RBAC as the API server evaluates it,
the admission policy refusing and allowing the operator's Jobs, and what `helm uninstall` keeps.
"""
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, ROOT
from tests.plugins.cluster import wait_for as poll

CRD = "customresourcedefinition/finetunejobs.kubetune.io"




def rendered_trainer_job(ftj: dict, tmp: Path) -> dict:
    """The Job the operator's builder makes for `ftj` (`kubetune render`), owned by the real object."""
    manifest = tmp / "ftj.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": ftj["apiVersion"], "kind": ftj["kind"], "spec": ftj["spec"],
                                        "metadata": {k: ftj["metadata"][k] for k in ("name", "namespace")}}))
    # With the trainer ServiceAccount the chart gives the operator (kubetune render reads the operator's settings).
    out = subprocess.run([str(Path(sys.executable).parent / "kubetune"), "render", str(manifest)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "KUBETUNE_OPERATOR_TRAINER_SERVICE_ACCOUNT": "kubetune-trainer"}).stdout
    (job,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Job"]
    for owner in job["metadata"]["ownerReferences"]:
        owner["uid"] = ftj["metadata"]["uid"]
    return job


def violations(job: dict) -> list[tuple[str, dict, str]]:
    """(what, a copy of `job` that breaks the policy, words of the policy's message)."""
    def variant(change):
        copy = json.loads(json.dumps(job))
        copy["metadata"]["name"] += f"-{len(out)}"
        change(copy["spec"]["template"]["spec"], copy)
        return copy

    def privileged(pod, _):
        pod["containers"][0]["securityContext"] = {"privileged": True}

    def caps(pod, _):
        pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]

    def other_sa(pod, _):
        pod["serviceAccountName"] = "cluster-admin-sa"

    def relabel(_, obj):
        obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] = "not-a-trainer"

    out: list = []
    for what, change, words in [
        ("privileged container", privileged, "rule unprivileged:"),
        ("added capability", caps, "rule unprivileged:"),
        ("hostPath volume", lambda pod, _: pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
         "rule trainer-volumes:"),
        ("host network", lambda pod, _: pod.update(hostNetwork=True), "rule no-host-access:"),
        ("another ServiceAccount", other_sa, "rule trainer-service-account:"),
        ("a token", lambda pod, _: pod.update(automountServiceAccountToken=True), "rule trainer-service-account:"),
        ("not a trainer", relabel, "rule trainer-pod-labels:"),
    ]:
        out.append((what, variant(change), words))
    return out


@pytest.mark.cluster
def test_install_upgrade_uninstall(cluster, namespace, tmp_path):
    release = f"kt{secrets.token_hex(3)}"
    system = f"{release}-system"
    operator = f"{release}-kubetune-operator"
    as_operator = f"--as=system:serviceaccount:{system}:{operator}"
    helm = lambda *args: subprocess.run(  # noqa: E731
        [str(cluster.helm_path), *args, "--namespace", system, f"--kubeconfig={cluster.kubeconfig}"],
        check=True, capture_output=True, text=True)
    cluster.kubectl("create", "namespace", system)
    cluster.kubectl("label", "namespace", system, "pod-security.kubernetes.io/enforce=restricted")
    try:
        # --take-ownership: other tests (or `kubectl apply -f crds/`) may have installed the CRD already.
        installed = helm("install", release, str(CHART), "--take-ownership", "--wait", "--timeout", "120s",
                         "--set", "rbac.scope=namespaces", "--set", f"watchNamespaces={{{namespace}}}")
        assert f"rollout status deployment/{operator}" in installed.stdout  # NOTES.txt

        deployment = cluster.kubectl_json("get", "deployment", operator, "-n", system)
        assert deployment["spec"]["replicas"] == 2 and deployment["status"]["readyReplicas"] == 2
        # The pods were admitted by a namespace enforcing `restricted`.
        pods = cluster.kubectl_json("get", "pods", "-n", system, "-l", "app.kubernetes.io/component=operator")
        assert len(pods["items"]) == 2
        assert cluster.kubectl_json("get", "pdb", operator, "-n", system)["spec"]["minAvailable"] == 1

        crd = cluster.kubectl_json("get", CRD)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release

        can = lambda verb, resource, ns, *sub: cluster.kubectl(  # noqa: E731
            "auth", "can-i", verb, resource, *sub, "-n", ns, as_operator, check=False).stdout.strip() == "yes"
        assert can("create", "jobs.batch", namespace)
        assert can("patch", "finetunejobs.kubetune.io", namespace, "--subresource=status")
        assert not can("create", "jobs.batch", "default") and not can("create", "jobs.batch", "kube-system")
        assert not can("get", "secrets", namespace) and not can("create", "pods", namespace)
        assert can("update", "leases.coordination.k8s.io", system)

        # The API server type-checked the policy's CEL without warnings.
        policy_name = f"{release}-kubetune-operator-jobs"
        def observed():
            policy = cluster.kubectl_json("get", "validatingadmissionpolicy", policy_name)
            status = policy.get("status", {})
            return status if status.get("observedGeneration") == policy["metadata"]["generation"] else None
        status = poll("the policy's type checking", observed)
        assert not status.get("typeChecking", {}).get("expressionWarnings"), status

        example = yaml.safe_load((ROOT / "examples" / "chat-lora.yaml").read_text())
        example["metadata"]["namespace"] = namespace
        cluster.kubectl("create", "-f", "-", input=json.dumps(example))
        ftj = cluster.kubectl_json("get", "ftj", example["metadata"]["name"], "-n", namespace)
        job = rendered_trainer_job(ftj, tmp_path)
        job["metadata"]["namespace"] = namespace
        cases = violations(job)
        # Policies load asynchronously: wait until the first violation is refused, then check them all.
        create = lambda obj, *extra: cluster.kubectl(  # noqa: E731
            "create", "-f", "-", *extra, input=json.dumps(obj), check=False)
        poll("the admission policy to refuse", lambda: create(cases[0][1], as_operator).returncode != 0)
        for what, bad, words in cases:
            refused = create(bad, as_operator)
            assert refused.returncode != 0, f"{what}: created"
            assert f"ValidatingAdmissionPolicy '{policy_name}'" in refused.stderr and words in refused.stderr, \
                (what, refused.stderr)
        # The policy binds the operator only: an admin may still create such a Job (dry run).
        assert create(cases[2][1], "--dry-run=server").returncode == 0
        allowed = create(job, as_operator)
        assert allowed.returncode == 0, allowed.stderr

        upgraded = helm("upgrade", release, str(CHART), "--reuse-values", "--wait", "--timeout", "120s",
                        "--set", "replicas=3", "--set", "operator.progressIntervalSeconds=4")
        assert "STATUS: deployed" in upgraded.stdout
        deployment = cluster.kubectl_json("get", "deployment", operator, "-n", system)
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert deployment["spec"]["replicas"] == 3 and deployment["status"]["readyReplicas"] == 3
        assert env["KUBETUNE_OPERATOR_PROGRESS_INTERVAL_SECONDS"] == "4"
        assert env["KUBETUNE_OPERATOR_NAMESPACES"] == namespace  # --reuse-values kept the rest

        uninstalled = helm("uninstall", release, "--wait")
        assert "finetunejobs.kubetune.io" in uninstalled.stdout  # "kept due to the resource policy"
        gone = lambda *what: cluster.kubectl(  # noqa: E731
            "get", *what, "--ignore-not-found", "-o", "name", check=False).stdout.strip() == ""
        assert gone("deployment", operator, "-n", system) and gone("role", operator, "-n", namespace)
        assert gone("validatingadmissionpolicy", policy_name) and gone("clusterrole", f"{operator}-discovery")
        assert cluster.kubectl_json("get", CRD)["metadata"]["name"] == "finetunejobs.kubetune.io"
        assert cluster.kubectl_json("get", "ftj", example["metadata"]["name"], "-n", namespace)["metadata"]["uid"] \
            == ftj["metadata"]["uid"]
    finally:
        subprocess.run([str(cluster.helm_path), "uninstall", release, "--namespace", system, "--ignore-not-found",
                        f"--kubeconfig={cluster.kubeconfig}"], capture_output=True)
        cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)


@pytest.mark.cluster
def test_everything_the_chart_renders_is_valid_for_the_api_server(cluster, namespace, helm):
    """Every object with every option on (but the prometheus-operator kinds, whose CRDs the local cluster lacks)
    passes server-side validation, with no PodSecurity warning in a namespace enforcing `restricted`."""
    values = ["--set", "rbac.scope=namespaces", "--set", f"watchNamespaces={{{namespace}}}",
              "--set", "networkPolicy.enabled=true", "--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
              "--set", "crds.install=false",
              "--set", "priorityClassName=system-cluster-critical"]
    out = subprocess.run([helm, "template", f"kt{secrets.token_hex(3)}", str(CHART), "--namespace", namespace,
                          *values], check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d and not d["apiVersion"].startswith("monitoring.coreos.com")]
    assert {"Deployment", "NetworkPolicy", "ConfigMap", "Role", "PodDisruptionBudget"} <= {d["kind"] for d in docs}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    assert "networkpolicy.networking.k8s.io" in result.stdout and "Warning" not in result.stderr, result.stderr
