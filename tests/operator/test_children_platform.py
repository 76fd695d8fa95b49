"""Platform settings (chart values trainer.*) in the trainer pod the builder makes: pull secrets, extra env,
volumes and mounts, default scheduling, and the interconnect resources of multi-node runs."""
from kubetune.operator import children, runs
from kubetune.operator.settings import OperatorSettings
from tests.operator.test_children import ftj

CA = {"name": "ca-bundle", "configMap": {"name": "corporate-ca"}}
CA_MOUNT = {"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True}
PLATFORM = OperatorSettings(
    trainer_image="registry.example/trainer:1", trainer_image_pull_secrets=["regcred"],
    trainer_env=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                 {"name": "AWS_CA_BUNDLE", "value": "/etc/ssl/corporate/ca.crt"},
                 {"name": "HOME", "value": "/root"}],  # the operator's own HOME wins
    trainer_volumes=[CA], trainer_volume_mounts=[CA_MOUNT],
    trainer_node_selector={"pool": "gpu", "zone": "a"},
    trainer_tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    trainer_multi_node_resources={"vpc.amazonaws.com/efa": "4"})


def pod_of(patch: dict | None = None, settings: OperatorSettings = PLATFORM) -> dict:
    job = ftj(patch)
    return children.build_job(job, runs.current_run(job), settings)["spec"]["template"]["spec"]


def test_platform_settings_reach_the_trainer_pod():
    pod = pod_of({"spec": {"scheduling": {"nodeSelector": {"zone": "b"}}}})
    (container,) = pod["containers"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HTTPS_PROXY"] == "http://proxy:3128" and env["AWS_CA_BUNDLE"] == "/etc/ssl/corporate/ca.crt"
    assert env["HOME"] == "/tmp" and [e["name"] for e in container["env"]].count("HOME") == 1
    assert CA in pod["volumes"] and CA_MOUNT in container["volumeMounts"]
    assert pod["nodeSelector"] == {"pool": "gpu", "zone": "b"}  # the FineTuneJob's key wins
    assert PLATFORM.trainer_tolerations[0] in pod["tolerations"]
    assert "vpc.amazonaws.com/efa" not in container["resources"]["requests"]  # one node needs no interconnect


def test_multi_node_pods_request_the_interconnect():
    pod = pod_of({"spec": {"nodes": 2, "resources": {"gpusPerNode": 8},
                          "hyperparameters": {"batchSize": 64, "microBatchSize": 4}}})
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["vpc.amazonaws.com/efa"] == resources["limits"]["vpc.amazonaws.com/efa"] == "4"
    assert resources["limits"]["nvidia.com/gpu"] == "8"


def test_without_platform_settings_the_pod_is_unchanged():
    pod = pod_of(settings=OperatorSettings(trainer_image="registry.example/trainer:1"))
    assert "imagePullSecrets" not in pod and "pool" not in pod.get("nodeSelector", {})
    assert [v["name"] for v in pod["volumes"]] == ["spec", "cache", "tmp", "dshm"]


def test_settings_read_from_the_environment_as_the_chart_writes_them(monkeypatch):
    monkeypatch.setenv("KUBETUNE_OPERATOR_TRAINER_IMAGE_PULL_SECRETS", "regcred,other")
    monkeypatch.setenv("KUBETUNE_OPERATOR_TRAINER_ENV", '[{"name": "A", "value": "1"}]')
    monkeypatch.setenv("KUBETUNE_OPERATOR_TRAINER_MULTI_NODE_RESOURCES", '{"rdma/ib": "1"}')
    settings = OperatorSettings()
    assert settings.trainer_image_pull_secrets == ["regcred", "other"]
    assert settings.trainer_env == [{"name": "A", "value": "1"}]
    assert settings.trainer_multi_node_resources == {"rdma/ib": "1"}
