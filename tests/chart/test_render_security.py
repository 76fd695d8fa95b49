"""The chart's security and platform values, rendered by the real helm: the trainer's identity and settings, the
admission policies' allow-lists, user-facing roles, CRD protection, and the chart as a dependency."""
import os
import re
import shutil
import subprocess
from unittest import mock

import pytest
import yaml

from kubetune.operator import children, runs
from kubetune.operator.settings import OperatorSettings
from tests.chart.conftest import CHART
from tests.chart.test_render import env_of, make_job_model, rules_of


def settings_of(deployment: dict) -> OperatorSettings:
    env = {name: var["value"] for name, var in env_of(deployment).items() if "value" in var}
    with mock.patch.dict(os.environ, env):
        return OperatorSettings()


def policy(docs, suffix: str) -> dict:
    return docs.one("ValidatingAdmissionPolicy", f"kubetune-operator-{suffix}")


def variable(policy_: dict, name: str) -> str:
    return next(v["expression"] for v in policy_["spec"]["variables"] if v["name"] == name)


def test_default_install_runs_trainers_under_the_trainer_service_account(template):
    """Cluster scope, no watchNamespaces: trainer pods still get the ServiceAccount the guides tell users to
    annotate, never the namespace's `default`."""
    settings = settings_of(template().one("Deployment"))
    assert settings.trainer_service_account == "kubetune-trainer"
    job = make_job_model()
    pod = children.build_job(job, runs.current_run(job), settings)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kubetune-trainer" and pod["automountServiceAccountToken"] is False


def test_trainer_values_reach_the_trainer_pod_and_the_policy_admits_them(template):
    ca = {"name": "ca-bundle", "configMap": {"name": "corporate-ca"}}
    values = {"trainer": {
        "imagePullSecrets": ["regcred"], "allowedImages": ["registry.example/ml/*"],
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                     {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "extraVolumes": [ca], "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/corporate"}],
        "multiNodeResources": {"vpc.amazonaws.com/efa": 4}, "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}}
    docs = template(values)
    settings = settings_of(docs.one("Deployment"))
    assert settings.trainer_multi_node_resources == {"vpc.amazonaws.com/efa": "4"}
    job = make_job_model()
    pod = children.build_job(job, runs.current_run(job), settings)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and ca in pod["volumes"]
    assert {e["name"] for e in pod["containers"][0]["env"]} >= {"HTTPS_PROXY", "HF_TOKEN"}
    assert pod["nodeSelector"]["pool"] == "gpu" and values["trainer"]["tolerations"][0] in pod["tolerations"]
    jobs = policy(docs, "jobs")
    assert variable(jobs, "allowedImages") == '["registry.example/ml/*"]'
    assert '"ca-bundle|configMap|corporate-ca"' in variable(jobs, "ownVolumes")
    secret_rule = next(v["expression"] for v in jobs["spec"]["validations"] if "secretKeyRef" in v["expression"])
    assert '"HF_TOKEN=hf/token"' in secret_rule
    assert '"regcred"' in next(v["expression"] for v in jobs["spec"]["validations"] if "imagePullSecrets" in
                               v["expression"])


def test_allowed_images_default_to_the_trainer_image(template):
    jobs = policy(template({"trainer": {"image": {"repository": "reg.example/trainer", "tag": "2"}}}), "jobs")
    assert variable(jobs, "allowedImages") == '["reg.example/trainer:2"]'


def test_policies_bind_the_operator_and_refuse_outside_opted_in_namespaces(template):
    docs = template(release="ml", namespace="ops", values={"serviceAccount": {"name": "op"},
                                                            "watchNamespaces": ["team-a"]})
    policies = docs.kinds("ValidatingAdmissionPolicy")
    assert len(policies) == 5
    for p in policies:
        (condition,) = p["spec"]["matchConditions"]
        assert condition["expression"] == 'request.userInfo.username == "system:serviceaccount:ops:op"'
    children_policy = docs.one("ValidatingAdmissionPolicy", "ml-kubetune-operator-children")
    operations = {op for rule in children_policy["spec"]["matchConstraints"]["resourceRules"]
                  for op in rule["operations"]}
    assert operations == {"CREATE", "UPDATE", "DELETE"}
    namespace_rule = children_policy["spec"]["validations"][0]["expression"]
    assert '"kubetune.io/managed"' in namespace_rule and '["team-a"]' in namespace_rule
    bindings = docs.kinds("ValidatingAdmissionPolicyBinding")
    assert sorted(b["spec"]["policyName"] for b in bindings) == sorted(p["metadata"]["name"] for p in policies)


def test_every_refusal_names_its_rule(template):
    for p in template().kinds("ValidatingAdmissionPolicy"):
        for validation in p["spec"]["validations"]:
            text = validation.get("message") or validation["messageExpression"]
            assert text.lstrip('"').startswith("rule "), text


@pytest.mark.parametrize("actions", [["Deny", "Warn"], ["Warn", "Deny", "Audit"], [], ["Deny", "Deny"]])
def test_schema_refuses_validation_actions_the_api_server_refuses(template, actions):
    with pytest.raises(subprocess.CalledProcessError) as refused:
        template({"admissionPolicy": {"validationActions": actions}})
    assert "admissionPolicy.validationActions" in refused.value.stderr


@pytest.mark.parametrize("actions", [["Deny"], ["Deny", "Audit"], ["Warn", "Audit"], ["Audit"]])
def test_schema_accepts_valid_validation_actions(template, actions):
    assert template({"admissionPolicy": {"validationActions": actions}}).kinds("ValidatingAdmissionPolicyBinding")


def test_crd_kept_by_helm_and_argo_cd_unless_told_otherwise(template):
    crds = template().kinds("CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == ["finetunejobs.kubetune.io", "finetunesweeps.kubetune.io"]
    for crd in crds:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep",
                                                  "argocd.argoproj.io/sync-options": "Prune=false,Delete=false"}
    assert not [c for c in template({"crds": {"keep": False}}).kinds("CustomResourceDefinition")
                if "annotations" in c["metadata"]]


def test_finetunejob_roles_aggregate_into_edit_and_view(template):
    docs = template()
    edit = docs.one("ClusterRole", "kubetune-finetunejobs-edit")
    view = docs.one("ClusterRole", "kubetune-finetunejobs-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert ("kubetune.io", "finetunejobs", "create") in rules_of(edit)
    assert ("kubetune.io", "finetunesweeps", "create") in rules_of(edit)
    assert ("kubetune.io", "finetunesweeps", "get") in rules_of(view)
    assert not [r for r in rules_of(edit) if r[1] == "finetunesweeps/status" and r[2] not in ("get", "list", "watch")]
    assert not [r for r in rules_of(edit) if r[1] == "finetunejobs/status" and r[2] not in ("get", "list", "watch")]
    assert {v for _, _, v in rules_of(view)} == {"get", "list", "watch"}
    assert not template({"rbac": {"aggregateToDefaultRoles": False}}).kinds("ClusterRole")[1:]


def test_operator_rbac_has_only_the_verbs_the_code_calls(template):
    rules = rules_of(template().one("ClusterRole", "kubetune-operator"))
    verbs = lambda resource: {v for _, r, v in rules if r == resource}  # noqa: E731
    # create and patch: a sweep's trials (created, suspended when pruned); never delete (owner references do it)
    assert verbs("finetunejobs") == {"get", "list", "watch", "create", "patch"}
    assert verbs("finetunejobs/status") == {"patch"}
    assert verbs("finetunesweeps") == {"get", "list", "watch"}
    assert verbs("finetunesweeps/status") == {"patch"}
    assert verbs("jobs/finalizers") == set()
    assert verbs("events") == {"create"}
    assert verbs("pods") == {"list", "watch"}


@pytest.mark.parametrize("enabled", [True, False])
def test_renders_as_a_dependency_with_a_condition(helm, tmp_path, enabled):
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "kubetune")
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "kubetune", "version": "0.1.0", "condition": "kubetune.enabled"}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump({"kubetune": {"enabled": enabled, "replicas": 1}}))
    out = subprocess.run([helm, "template", "platform", str(parent), "--namespace", "platform"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) == (1 if enabled else 0)
    if enabled:
        assert deployments[0]["spec"]["replicas"] == 1 and deployments[0]["metadata"]["name"] == \
            "platform-kubetune-operator"


def notes_chart(tmp_path):
    """A copy of the chart that renders NOTES.txt into a ConfigMap `notes` (helm template skips NOTES.txt)."""
    chart = tmp_path / "kubetune"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "files" / "notes.txt")
    (chart / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n'
        '  notes: {{ tpl (.Files.Get "files/notes.txt") . | quote }}\n')
    return chart


def test_metrics_are_closed_to_all_but_their_readers_by_default(template):
    policy = template().one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubetune.io/metrics-reader": "true"}}}]
    assert template({"networkPolicy": {"metricsIngress": False}}).kinds("NetworkPolicy") == []


def test_name_override_stays_out_of_the_immutable_selector(template):
    default = template().one("Deployment")["spec"]["selector"]
    renamed = template({"nameOverride": "finetune"}).one("Deployment")
    assert renamed["spec"]["selector"] == default
    assert renamed["metadata"]["labels"]["app.kubernetes.io/name"] == "finetune"


def test_pdb_lets_unhealthy_operator_pods_be_evicted(template):
    assert template().one("PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_notes_and_alerts_name_what_this_release_created(template, tmp_path):
    """Under fullnameOverride, every object NOTES.txt points at exists, and the operator-down alert watches this
    release's scrape job (the Service's name, as a ServiceMonitor names the job)."""
    chart = notes_chart(tmp_path)
    values = {"fullnameOverride": "ml", "prometheusRule": {"enabled": True}}
    docs = template(values)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    notes = template(values, chart=chart).one("ConfigMap", "notes")["data"]["notes"]
    for kind, name in re.findall(r"(deployment|lease|service)[/ ]([a-z0-9-]+)", notes):
        expected = {"deployment": "Deployment", "service": "Service"}.get(kind)
        if expected:
            assert (expected, name) in names, (kind, name)
    assert ("Deployment", "ml-operator") in names and "ml-operator" in notes
    rules = yaml.safe_dump(docs.one("PrometheusRule")["spec"])
    service = docs.one("Service", "ml-operator-metrics")["metadata"]["name"]
    assert 'job=~".*ml-operator.*"' in rules and re.fullmatch(".*ml-operator.*", service)


def test_notes_warn_of_watched_namespaces_without_the_trainer_service_account(template, tmp_path):
    chart = notes_chart(tmp_path)
    notes = lambda values: template(values, chart=chart).one("ConfigMap", "notes")["data"]["notes"]  # noqa: E731
    partial = notes({"watchNamespaces": ["team-a", "team-b"],
                     "trainer": {"serviceAccount": {"namespaces": ["team-a"]}}})
    assert "WARNING" in partial and "namespace(s) team-b:" in partial
    assert "WARNING" not in notes({"watchNamespaces": ["team-a", "team-b"]})


def test_the_trials_policy_compares_every_spec_field_but_suspend(template):
    """A trial's patch may change spec.suspend only: the policy compares each other field of the FineTuneJob spec,
    so a field added to the API and not to the chart's list would be changeable; this fails first."""
    import re

    from kubetune.api.spec import FineTuneJobSpec

    trials = next(p for p in template().kinds("ValidatingAdmissionPolicy")
                  if p["metadata"]["name"].endswith("-trials"))
    (rule,) = [v["expression"] for v in trials["spec"]["validations"] if "oldObject.spec" in v["expression"]]
    compared = set(re.findall(r"has\(object\.spec\.(\w+)\)", rule))
    fields = {f.alias or n for n, f in FineTuneJobSpec.model_fields.items()}
    assert compared == fields - {"suspend"}
    resources = trials["spec"]["matchConstraints"]["resourceRules"]
    assert [r["resources"] for r in resources] == [["finetunejobs"]]  # not finetunejobs/status
