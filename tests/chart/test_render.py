"""charts/kubetune rendered by the real helm over several value sets, asserted on the parsed objects."""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from kubetune.api.crd import CRD_PATH, SWEEP_CRD_PATH
from kubetune.operator import children, labels, runs
from kubetune.operator.settings import OperatorSettings
from tests.api.cases import make_job
from tests.chart.conftest import CHART, ROOT

NAMESPACED = {"rbac": {"scope": "namespaces"}, "watchNamespaces": ["team-a", "team-b"]}


def env_of(deployment: dict) -> dict[str, dict]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def rules_of(role: dict) -> list[tuple[str, str, str]]:
    return [(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]]


def test_lint_strict_with_defaults_and_everything_enabled(helm, tmp_path):
    everything = {**NAMESPACED, "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
                  "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"]}}}
    (tmp_path / "all.yaml").write_text(yaml.safe_dump(everything))
    for extra in ([], ["--values", str(tmp_path / "all.yaml")]):
        result = subprocess.run([helm, "lint", "--strict", str(CHART), *extra], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("path", [CRD_PATH, SWEEP_CRD_PATH])
def test_chart_crd_is_a_byte_identical_copy_of_crds(path):
    assert (CHART / "files" / path).read_bytes() == (ROOT / path).read_bytes()


@pytest.mark.parametrize("path", [CRD_PATH, SWEEP_CRD_PATH])
def test_crd_is_installed_as_generated_and_kept_on_uninstall(template, path):
    generated = yaml.safe_load((ROOT / path).read_text())
    crd = template().one("CustomResourceDefinition", generated["metadata"]["name"])
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["spec"] == generated["spec"]


def test_crd_is_left_out_when_not_installed(template):
    assert template({"crds": {"install": False}}).kinds("CustomResourceDefinition") == []


def test_operator_pods_are_restricted(template):
    pod = template().one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not any("hostPath" in v for v in pod["volumes"])
    assert container["resources"]["limits"]["memory"]


def test_two_replicas_with_pdb_probes_and_soft_anti_affinity(template):
    docs = template()
    deployment, pdb = docs.one("Deployment"), docs.one("PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spec = deployment["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    container = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert ports["health"] == int(env_of(deployment)["KUBETUNE_OPERATOR_HEALTH_PORT"]["value"])
    # The Service selects the operator pods and never trainer pods (labels from the operator's builder).
    service = docs.one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    run = runs.current_run(make_job_model())
    assert not service["spec"]["selector"].items() <= children.labels(make_job_model(), run).items()


def test_one_replica_has_no_pdb_and_an_explicit_affinity_wins(template):
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]}}}
    docs = template({"replicas": 1, "affinity": affinity})
    assert docs.kinds("PodDisruptionBudget") == []
    assert docs.one("Deployment")["spec"]["template"]["spec"]["affinity"] == affinity


def test_several_replicas_need_leader_election(template):
    with pytest.raises(subprocess.CalledProcessError) as refused:
        template({"leaderElection": {"enabled": False}})
    assert "leaderElection.enabled" in refused.value.stderr
    assert template({"replicas": 1, "leaderElection": {"enabled": False}}).one("Deployment")


def make_job_model():
    from kubetune.api import FineTuneJob
    return FineTuneJob.model_validate(make_job({}, name="chat"))


def test_every_operator_env_var_is_a_setting_the_operator_accepts(template, monkeypatch):
    values = {"watchNamespaces": ["ml"], "operator": {"progressIntervalSeconds": 2.5, "maxRunsKept": 3, "workers": 7},
              "trainer": {"image": {"repository": "reg.example/trainer", "tag": "1.2"},
                          "podAnnotationPrefixes": ["sidecar.istio.io/", "x/"], "runAsUser": 4242}}
    env = env_of(template(values).one("Deployment"))
    fields = {f"KUBETUNE_OPERATOR_{name.upper()}" for name in OperatorSettings.model_fields}
    # Every setting is a value (or comes from the pod): a new operator setting fails here until the chart has it.
    assert set(env) == fields, {"not settings": set(env) - fields, "not in the chart": fields - set(env)}
    for name, var in env.items():
        monkeypatch.setenv(name, var.get("value", "from-field-ref"))
    settings = OperatorSettings()  # validates every value as the operator would at start-up
    assert settings.namespaces == ["ml"] and settings.progress_interval_seconds == 2.5
    assert settings.max_runs_kept == 3 and settings.run_as_user == 4242 and settings.workers == 7
    assert settings.trainer_image == "reg.example/trainer:1.2"
    assert settings.pod_annotation_prefixes == ["sidecar.istio.io/", "x/"]
    assert settings.lease_name == "kubetune-operator" and settings.leader_election is True
    assert env["KUBETUNE_OPERATOR_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["KUBETUNE_OPERATOR_IDENTITY"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize("image, expected", [
    ({}, "ghcr.io/kubetune/{}:0.1.0"),
    ({"tag": "0.2.0"}, "ghcr.io/kubetune/{}:0.2.0"),
    ({"tag": "0.2.0", "digest": "sha256:" + "a" * 64}, "ghcr.io/kubetune/{}@sha256:" + "a" * 64),
])
def test_images_by_tag_or_digest(template, image, expected):
    deployment = template({"image": image, "trainer": {"image": image}}).one("Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == expected.format("operator")
    assert env_of(deployment)["KUBETUNE_OPERATOR_TRAINER_IMAGE"]["value"] == expected.format("trainer")


def test_scheduling_and_pod_metadata_values_reach_the_pod(template):
    values = {"nodeSelector": {"pool": "system"}, "tolerations": [{"key": "k", "operator": "Exists"}],
              "priorityClassName": "system-cluster-critical", "imagePullSecrets": [{"name": "regcred"}],
              "podAnnotations": {"a": "1"}, "podLabels": {"team": "ml"}, "image": {"pullPolicy": "Always"}}
    template_ = template(values).one("Deployment")["spec"]["template"]
    spec = template_["spec"]
    assert spec["nodeSelector"] == {"pool": "system"} and spec["tolerations"] == values["tolerations"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert template_["metadata"]["annotations"] == {"a": "1"} and template_["metadata"]["labels"]["team"] == "ml"
    assert spec["containers"][0]["imagePullPolicy"] == "Always"


def test_cluster_scope_grants_least_privilege(template):
    docs = template()
    role = docs.one("ClusterRole", "kubetune-operator")
    rules = rules_of(role)
    assert not [r for r in rules if r[1] == "secrets" or "*" in r]
    assert {v for g, r, v in rules if r == "pods"} == {"list", "watch"}
    assert ("kubetune.io", "finetunejobs/finalizers", "update") in rules
    assert ("batch", "jobs", "create") in rules
    binding = docs.one("ClusterRoleBinding", "kubetune-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune-operator",
                                    "namespace": "kubetune-system"}]
    leases = docs.one("Role", "kubetune-operator-leader-election")
    assert leases["metadata"]["namespace"] == "kubetune-system"
    assert {r for _, r, _ in rules_of(leases)} == {"leases"}


def test_namespaces_scope_grants_roles_only_in_watched_namespaces(template):
    docs = template(NAMESPACED)
    roles = [r for r in docs.kinds("Role") if r["metadata"]["name"] == "kubetune-operator"]
    bindings = [b for b in docs.kinds("RoleBinding") if b["metadata"]["name"] == "kubetune-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert rules_of(roles[0]) == rules_of(template().one("ClusterRole", "kubetune-operator"))[:len(rules_of(roles[0]))]
    # Cluster-wide, only kopf's read-only discovery remains (besides the users' aggregated FineTuneJob roles).
    (discovery,) = [r for r in docs.kinds("ClusterRole") if "finetunejobs-" not in r["metadata"]["name"]]
    assert {v for _, _, v in rules_of(discovery)} == {"list", "watch"}
    assert {r for _, r, _ in rules_of(discovery)} == {"customresourcedefinitions", "namespaces"}
    assert env_of(docs.one("Deployment"))["KUBETUNE_OPERATOR_NAMESPACES"]["value"] == "team-a,team-b"
    trainers = [s for s in docs.kinds("ServiceAccount") if s["metadata"]["name"] == "kubetune-trainer"]
    assert sorted(s["metadata"]["namespace"] for s in trainers) == ["team-a", "team-b"]
    assert all(s["automountServiceAccountToken"] is False for s in trainers)
    no_discovery = template({**NAMESPACED, "rbac": {"scope": "namespaces", "discovery": False,
                                                    "aggregateToDefaultRoles": False}})
    assert no_discovery.kinds("ClusterRole") == [] and no_discovery.kinds("ClusterRoleBinding") == []


def test_namespaces_scope_needs_namespaces(template):
    with pytest.raises(subprocess.CalledProcessError) as refused:
        template({"rbac": {"scope": "namespaces"}})
    assert "watchNamespaces" in refused.value.stderr


def test_admission_policy_matches_only_the_operator(template):
    docs = template(release="ml", namespace="ops", values={"serviceAccount": {"name": "op"}})
    policy = docs.one("ValidatingAdmissionPolicy", "ml-kubetune-operator-jobs")
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == 'request.userInfo.username == "system:serviceaccount:ops:op"'
    binding = docs.one("ValidatingAdmissionPolicyBinding", "ml-kubetune-operator-jobs")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert template({"admissionPolicy": {"enabled": False}}).kinds("ValidatingAdmissionPolicy") == []


def test_monitors_scrape_the_ports_and_labels_the_operator_and_trainers_expose(template):
    docs = template({"watchNamespaces": ["ml"], "metrics": {"serviceMonitor": {"enabled": True},
                                                            "podMonitor": {"enabled": True}}})
    service, monitor = docs.one("Service"), docs.one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # the jobs' namespace label, not the operator's
    pod_monitor = docs.one("PodMonitor")
    job = make_job_model()
    run = runs.current_run(job)
    pod = children.build_job(job, run, OperatorSettings())["spec"]["template"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports[pod_monitor["spec"]["podMetricsEndpoints"][0]["port"]] == 9400
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    # The dashboard selects trainer series by `finetunejob` (hack/observability/dashboard.py's label contract).
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    relabeled = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabeled["finetunejob"] == ["__meta_kubernetes_pod_label_"
                                        + labels.LABEL_FINETUNEJOB.replace(".", "_").replace("/", "_")]


def test_network_policy_allows_the_api_server_trainer_metrics_and_scrapes(template):
    policy = template({"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"]}},
                       "watchNamespaces": ["ml"]}).one("NetworkPolicy")
    egress = policy["spec"]["egress"]
    assert egress[0]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert egress[1]["ports"] == [{"port": 9400, "protocol": "TCP"}]
    assert egress[1]["to"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ml"}}
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubetune.io/metrics-reader": "true"}}}]}]


def test_dashboards_and_alerts_come_from_the_generated_files(template, bare_chart):
    # Without the generated files: nothing rendered by default, and asking for the rule says what is missing.
    assert template(chart=bare_chart).kinds("ConfigMap") == []
    with pytest.raises(subprocess.CalledProcessError) as refused:
        template({"prometheusRule": {"enabled": True}}, chart=bare_chart)
    assert "files/alerts/kubetune.rules.yaml" in refused.value.stderr
    dashboard = '{"title": "kubetune", "panels": [{"expr": "sum(kubetune_train_loss)"}]}\n'
    rules = {"groups": [{"name": "kubetune", "rules": [
        {"alert": "KubetuneJobFailed", "expr": "kubetune_operator_finetunejobs{phase=\"Failed\"} > 0",
         "labels": {"severity": "warning"}, "annotations": {"summary": "{{ $labels.namespace }} failed"}}]}]}
    (bare_chart / "files" / "dashboards").mkdir()
    (bare_chart / "files" / "dashboards" / "kubetune.json").write_text(dashboard)
    (bare_chart / "files" / "alerts").mkdir()
    (bare_chart / "files" / "alerts" / "kubetune.rules.yaml").write_text(yaml.safe_dump(rules))
    docs = template({"prometheusRule": {"enabled": True}, "dashboards": {"namespace": "monitoring"}},
                    chart=bare_chart)
    config_map = docs.one("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["data"] == {"kubetune.json": dashboard.rstrip("\n")}
    assert docs.one("PrometheusRule")["spec"]["groups"] == rules["groups"]


@pytest.mark.parametrize("values, named", [
    ({"replicas": "two"}, "replicas"),
    ({"rbac": {"scope": "everywhere"}}, "rbac.scope"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ({"image": {"digest": "latest"}}, "image.digest"),
    ({"watchNamespaces": "ml"}, "watchNamespaces"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces.0"),
    ({"operator": {"maxRunsKept": 11}}, "operator.maxRunsKept"),
    ({"operator": {"metricsPort": 70000}}, "operator.metricsPort"),
    ({"admissionPolicy": {"validationActions": ["Block"]}}, "admissionPolicy.validationActions.0"),
    ({"crds": {"install": "yes"}}, "crds.install"),
    ({"metrics": {"podMonitor": {"interval": "often"}}}, "metrics.podMonitor.interval"),
    ({"trainer": {"runAsUser": 0}}, "trainer.runAsUser"),
    ({"replica": 3}, "replica"),
])
def test_schema_refuses_bad_values_naming_them(template, values, named):
    with pytest.raises(subprocess.CalledProcessError) as refused:
        template(values)
    assert f"- {named}:" in refused.value.stderr or f"Additional property {named} " in refused.value.stderr, \
        refused.value.stderr


def test_config_is_the_chart_rendered(helm):
    result = subprocess.run([sys.executable, str(ROOT / "config" / "generate.py"), "--check"],
                            capture_output=True, text=True, env={**os.environ, "KUBETUNE_HELM": helm})
    assert result.returncode == 0, result.stderr


def test_every_value_is_commented():
    """Each value the schema names (its leaves: free-form maps count as one) has a comment line just above."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    stack: list[tuple[int, str]] = []
    previous = ""
    uncommented = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        key = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if key:
            indent = len(key.group(1))
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, key.group(2))]
            node = schema
            for _, part in stack:
                node = (node or {}).get("properties", {}).get(part)
            if node is not None and "properties" not in node and not previous.startswith("#"):
                uncommented.append(".".join(k for _, k in stack))
        if line.strip():
            previous = line.strip()
    assert not uncommented, uncommented
