"""The pure builder: the children a FineTuneJob becomes, and which spec edits start a new run."""
import json

import pytest

from kubetune.api import FineTuneJob, contract
from kubetune.api.status import FineTuneJobStatus
from kubetune.operator import children, labels, runs
from kubetune.operator.settings import OperatorSettings
from tests.api.cases import make_job

SETTINGS = OperatorSettings(trainer_image="registry.example/trainer:1")
UID = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"


def ftj(patch: dict | None = None, generation: int = 1, status: dict | None = None) -> FineTuneJob:
    doc = make_job(patch, name="chat")
    doc["metadata"].update(namespace="team-a", uid=UID, generation=generation)
    if status:
        doc["status"] = status
    return FineTuneJob.model_validate(doc)


def built(patch: dict | None = None) -> tuple[dict, dict, list[dict]]:
    job = ftj(patch)
    run = runs.current_run(job)
    k8s_job = children.build_job(job, run, SETTINGS)
    return k8s_job, k8s_job["spec"]["template"]["spec"], children.build_dependents(job, run, SETTINGS)


def test_job_shape_single_gpu():
    patch = {"spec": {"resources": {"gpusPerNode": 1, "memory": "32Gi", "cpu": "8",
                                    "gpuProduct": "NVIDIA-H100-80GB-HBM3"}}}
    job, pod, deps = built(patch)
    assert job["metadata"]["name"] == "chat-g1"
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                                   "name": "chat", "uid": UID, "controller": True,
                                                   "blockOwnerDeletion": True}]
    assert job["metadata"]["labels"][labels.LABEL_RUN_ID] == "g1-0f1e2d3c"
    assert job["spec"]["suspend"] is False and job["spec"]["completions"] == 1
    assert "completionMode" not in job["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["kubetune-train"]
    assert c["image"] == "registry.example/trainer:1"
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1",
                                           "ephemeral-storage": "20Gi"},
                              "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}
    # the cache has a size the scheduler reserves: outgrowing it is a reason, not an endless eviction loop
    assert {"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}} in pod["volumes"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    env = {e["name"]: e for e in c["env"]}
    assert env[contract.RUN_ID_ENV]["value"] == "g1-0f1e2d3c"
    assert env[contract.SPEC_FILE_ENV]["value"] == "/etc/kubetune/finetunejob.json"
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    # the spec reaches the trainer through a ConfigMap controlled by the FineTuneJob (created before the Job)
    [config] = deps
    assert config["kind"] == "ConfigMap" and config["immutable"] is True
    assert config["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    handed = json.loads(config["data"][contract.SPEC_FILE_NAME])
    assert FineTuneJob.model_validate(handed).spec == ftj(patch).spec
    assert "status" not in handed


def test_restricted_security_context():
    _, pod, _ = built()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                  "capabilities": {"drop": ["ALL"]}}


def test_trainer_service_account_only_when_set_and_never_its_token():
    _, pod, _ = built()
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    job = ftj(None)
    named = children.build_job(job, runs.current_run(job), OperatorSettings(trainer_service_account="trainer"))
    spec = named["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "trainer" and spec["automountServiceAccountToken"] is False


def test_credentials_only_by_reference():
    job, pod, deps = built({"spec": {"storage": {"secretRef": {"name": "s3-keys"}}}})
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "s3-keys", "key": key}}}
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]


def test_fail_fast_on_bad_input_and_ignore_disruptions():
    job, _, _ = built({"spec": {"runPolicy": {"backoffLimit": 5, "activeDeadlineSeconds": 3600,
                                              "ttlSecondsAfterFinished": 600}}})
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (5, 3600, 600)
    ignore, fail = spec["podFailurePolicy"]["rules"]
    # not 137: any SIGKILL exits so; the operator fails runs on the container's OOMKilled reason instead
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["values"] == [64, 65]
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_multi_gpu_uses_torchrun_standalone_under_the_exit_code_keeping_launcher():
    _, pod, deps = built({"spec": {"resources": {"gpusPerNode": 4}, "hyperparameters": {"batchSize": 16}}})
    command = pod["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "kubetune.trainer.launch"]
    assert "--standalone" in command and "--nproc-per-node=4" in command
    assert command[-2:] == ["-m", "kubetune.trainer"]
    # The workers get the pod's grace period after a SIGTERM, less a margin for the launcher itself.
    timeout = next(int(a.split("=")[1]) for a in command if a.startswith("--shutdown-timeout="))
    assert 0 < timeout < pod["terminationGracePeriodSeconds"]
    assert len(deps) == 1


def test_multi_node_indexed_job_with_headless_service():
    job, pod, deps = built({"spec": {"nodes": 3, "resources": {"gpusPerNode": 8},
                                     "hyperparameters": {"batchSize": 96, "microBatchSize": 4}}})
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert pod["subdomain"] == "chat-g1"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"]["value"] == "chat-g1-0.chat-g1"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "--nnodes=3" in pod["containers"][0]["command"]
    service = deps[1]
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {labels.LABEL_JOB_NAME: "chat-g1"}


def test_scheduling_and_kueue():
    job, pod, _ = built({"spec": {"scheduling": {
        "nodeSelector": {"pool": "a100"}, "priorityClassName": "training", "queueName": "team-a",
        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]}}})
    assert job["metadata"]["labels"][labels.LABEL_KUEUE_QUEUE] == "team-a"
    assert job["spec"]["suspend"] is True  # Kueue admits by unsuspending
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["priorityClassName"] == "training"
    assert {"key": "spot", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_suspend_maps_to_the_job():
    job, _, _ = built({"spec": {"suspend": True}})
    assert job["spec"]["suspend"] is True


@pytest.mark.parametrize("patch, effect", [
    ({"spec": {"suspend": True}}, "in place"),
    ({"spec": {"runPolicy": {"activeDeadlineSeconds": 60, "ttlSecondsAfterFinished": 5}}}, "in place"),
    ({"metadata": {"labels": {"team": "x"}}}, "in place"),
    ({"spec": {"runPolicy": {"backoffLimit": 1}}}, "new job"),
    ({"spec": {"image": "registry.example/trainer:2"}}, "new job"),
    ({"spec": {"scheduling": {"tolerations": [{"key": "spot", "operator": "Exists"}]}}}, "new job"),
    ({"spec": {"resources": {"memory": "64Gi"}}}, "new job"),
    ({"spec": {"hyperparameters": {"maxSteps": 11}}}, "new run"),
    ({"spec": {"dataset": {"maxSeqLength": 512}}}, "new run"),
    ({"spec": {"resources": {"gpusPerNode": 2}, "hyperparameters": {"batchSize": 16}}}, "new run"),
    ({"spec": {"storage": {"endpoint": "http://minio:9000"}}}, "new run"),
])
def test_what_an_edit_does(patch, effect):
    """Fault 10: the run's identity decides the run id (artifacts prefix, checkpoints); the pod template
    decides the Job. docs/operator-fields.md has the table."""
    first = ftj(generation=1)
    run = runs.current_run(first)
    running = children.build_job(first, run, SETTINGS)
    status = FineTuneJobStatus(run_id=run.run_id, spec_hash=run.spec_hash, job_name=run.job_name,
                               phase="Running").to_wire()
    edited = FineTuneJob.model_validate({**make_job(patch, name="chat"), "status": status} | {
        "metadata": {**make_job(patch, name="chat")["metadata"], "namespace": "team-a", "uid": UID,
                     "generation": 2}})
    again = runs.current_run(edited, [running])
    assert (again.run_id == run.run_id, again.job_name) == {
        "in place": (True, "chat-g1"), "new job": (True, "chat-g2"), "new run": (False, "chat-g2")}[effect]


def test_runs_started_by_an_older_operator_are_recognised():
    job = ftj()
    old = runs.current_run(job)
    status = FineTuneJobStatus(run_id=old.run_id, spec_hash=runs.legacy_training_hash(job),
                               job_name=old.job_name, phase="Running").to_wire()
    legacy = children.build_job(job, old, SETTINGS)
    legacy["metadata"]["annotations"] = {labels.ANNOTATION_SPEC_HASH: runs.legacy_training_hash(job),
                                         labels.ANNOTATION_GENERATION: "1"}  # no template hash yet
    again = runs.current_run(ftj(status=status), [legacy])
    assert (again.run_id, again.job_name) == (old.run_id, "chat-g1")


def test_in_place_patch():
    observed = {"spec": {"suspend": False, "activeDeadlineSeconds": None}}
    assert children.in_place_patch(ftj(), observed) is None
    assert children.in_place_patch(ftj({"spec": {"suspend": True}}), observed) == {"spec": {"suspend": True}}
    assert children.in_place_patch(ftj(), {"spec": {"suspend": True}}) == {"spec": {"suspend": False}}
    # with a Kueue queue, unsuspending is Kueue's admission decision, never the operator's
    queued = ftj({"spec": {"scheduling": {"queueName": "q"}}})
    assert children.in_place_patch(queued, {"spec": {"suspend": True}}) is None
    deadline = ftj({"spec": {"runPolicy": {"activeDeadlineSeconds": 99}}})
    assert children.in_place_patch(deadline, observed) == {"spec": {"activeDeadlineSeconds": 99}}


def test_configured_annotations_reach_the_pods():
    job = ftj({"metadata": {"annotations": {"sidecar.istio.io/inject": "false", "team": "nlp"}}})
    settings = OperatorSettings(pod_annotation_prefixes="sidecar.istio.io/")
    template = children.build_job(job, runs.current_run(job), settings)["spec"]["template"]
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert "annotations" not in children.build_job(job, runs.current_run(job), SETTINGS)["spec"]["template"][
        "metadata"]
