"""The operator's own manifests (config/, rendered from charts/kubetune) are accepted by the API server,
including PodSecurity `restricted`."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]


@pytest.mark.cluster
def test_operator_deployment_passes_restricted_pod_security(cluster, namespace):
    docs = [d for d in yaml.safe_load_all((ROOT / "config" / "manager" / "operator.yaml").read_text())
            if d["kind"] != "Namespace"]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace  # a namespace enforcing `restricted`
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    assert "deployment.apps/kubetune-operator created (server dry run)" in result.stdout
    assert "PodSecurity" not in result.stderr, result.stderr


@pytest.mark.cluster
def test_rbac_grants_no_secrets_and_no_pod_writes(cluster, finetunejob_crd):
    cluster.kubectl("apply", "-k", str(ROOT / "config" / "rbac"))
    can = lambda verb, resource, *sub: cluster.kubectl(  # noqa: E731
        "auth", "can-i", verb, resource, *sub, "-n", "default",
        "--as=system:serviceaccount:kubetune-system:kubetune-operator", check=False).stdout.strip() == "yes"
    # (kubectl reads `resource/x` as a resource's object named x: a subresource needs --subresource)
    assert can("create", "jobs.batch") and can("patch", "finetunejobs.kubetune.io", "--subresource=status")
    assert can("watch", "pods") and not can("create", "pods") and not can("delete", "pods")
    assert not can("get", "secrets") and not can("list", "secrets")


@pytest.mark.cluster
def test_all_of_config_is_accepted_by_the_api_server(cluster):
    """`kubectl apply -k config/` (the chart rendered: Namespace, RBAC, admission policies, Deployment, PDB,
    Service) passes the API server's validation, the policy's CEL type check included."""
    result = cluster.kubectl("apply", "--dry-run=server", "-k", str(ROOT / "config"))
    for name in ("validatingadmissionpolicy.admissionregistration.k8s.io/kubetune-operator-jobs",
                 "validatingadmissionpolicy.admissionregistration.k8s.io/kubetune-operator-children",
                 "validatingadmissionpolicy.admissionregistration.k8s.io/kubetune-operator-services",
                 "validatingadmissionpolicy.admissionregistration.k8s.io/kubetune-operator-workloads",
                 "clusterrole.rbac.authorization.k8s.io/kubetune-finetunejobs-edit",
                 "poddisruptionbudget.policy/kubetune-operator",
                 "clusterrole.rbac.authorization.k8s.io/kubetune-operator"):
        assert name in result.stdout, result.stdout
    # hack/cluster creates the namespace and ServiceAccount imperatively; kubectl only warns it will adopt them.
    warnings = [w for w in result.stderr.splitlines() if "Warning" in w and "last-applied-configuration" not in w]
    assert not warnings, result.stderr
