"""resources.gpuResourceName: the extended resource a trainer pod asks for, for GPUs other than NVIDIA's."""
from kubetune.api import FineTuneJob
from kubetune.operator import children, metrics, runs
from kubetune.operator.settings import OperatorSettings
from tests.api.cases import make_job

SETTINGS = OperatorSettings(trainer_image="registry.example/trainer:1")


def built(resources: dict, nodes: int = 1) -> dict:
    doc = make_job({"spec": {"resources": resources, "nodes": nodes,
                             "hyperparameters": {"batchSize": 64, "microBatchSize": 4}}}, name="amd")
    doc["metadata"].update(namespace="team-a", uid="0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9", generation=1)
    job = FineTuneJob.model_validate(doc)
    return children.build_job(job, runs.current_run(job), SETTINGS)


def test_the_named_resource_is_requested_limited_and_tolerated():
    job = built({"gpusPerNode": 2, "gpuResourceName": "amd.com/gpu", "memory": "64Gi"})
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["requests"]["amd.com/gpu"] == container["resources"]["limits"]["amd.com/gpu"] == "2"
    everything = str(pod)
    assert "nvidia.com/gpu" not in everything  # neither requested nor tolerated
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_no_gpus_request_no_gpu_resource_of_any_name():
    pod = built({"gpusPerNode": 0, "gpuResourceName": "amd.com/gpu"})["spec"]["template"]["spec"]
    assert "amd.com/gpu" not in str(pod)


def test_gpu_seconds_count_gpus_of_the_resource_the_spec_names():
    job = built({"gpusPerNode": 2, "gpuResourceName": "amd.com/gpu"}, nodes=2)
    assert metrics.gpus_of(job, "amd.com/gpu") == 4 and metrics.gpus_of(job) == 0
