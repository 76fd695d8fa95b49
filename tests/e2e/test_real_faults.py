"""Faults that only a real node produces, once each, with what the FineTuneJob's status, its events and Argo CD's
health show for them: the kernel's OOM kill, an image that cannot be pulled, and an eviction for outgrowing the
cache volume. On kwok these come from pod annotations (tests/operator); here the kernel, containerd and the
kubelet's eviction manager decide."""
import secrets
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import E2E_NAMESPACE, wait_until
from tests.observability.argocd import health
from tests.operator.conftest import manifest, operators  # noqa: F401 (fixture)

pytestmark = pytest.mark.cluster


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


def warnings(cluster, ftj: dict) -> dict[str, str]:
    """The operator's Warning events on this FineTuneJob (by uid: an earlier one of the same name left its own),
    reason → message."""
    meta = ftj["metadata"]
    items = cluster.kubectl_json("get", "events", "-n", meta["namespace"], "--field-selector",
                                 f"involvedObject.uid={meta['uid']},type=Warning")["items"]
    return {e["reason"]: e["message"] for e in items}


def held(cluster, name: str) -> bool:
    """Whether the run's one Job is suspended: the operator ended the run itself and keeps it from retrying."""
    [job] = cluster.kubectl_json("get", "jobs", "-n", E2E_NAMESPACE, "-l", f"kubetune.io/finetunejob={name}")["items"]
    return job["spec"].get("suspend") is True


def test_a_trainer_over_its_memory_limit_is_oom_killed_and_the_run_fails(cluster, real_jobs, tiny_in_s3):
    name = f"oom-{secrets.token_hex(2)}"  # the e2e namespace is shared: an earlier run's pods may linger
    # 160Mi: the kernel kills the trainer while it imports torch, seconds after the container starts.
    real_jobs.apply(name, real_jobs.spec(tiny_in_s3["model"], tiny_in_s3["data"], resources={"memory": "160Mi"}))
    failed = real_jobs.wait_phase(name, ("Succeeded", "Failed"), 180)
    assert failed["phase"] == "Failed" and condition(failed, "Failed")["reason"] == "OOMKilled", failed
    pod = min(real_jobs.pods(name), key=lambda p: p["metadata"]["creationTimestamp"])
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    assert pod["spec"]["nodeName"] == cluster.real_node
    # Not retried: the same settings would be killed again. The operator holds the Job (no policy can match it).
    wait_until("the Job held", lambda: held(cluster, name), 30)
    assert "OOMKilled" in wait_until("the OOMKilled event", lambda: warnings(cluster, real_jobs.get(name)), 30)
    verdict = health(real_jobs.get(name))
    assert verdict["status"] == "Degraded" and "OOMKilled" in verdict["message"], verdict


def test_an_image_that_cannot_be_pulled_is_a_pending_run_that_says_so(cluster, namespace, operators):
    """The kubelet really pulls: an operator of this tree whose pods pull IfNotPresent (as the deployed one's do,
    from the cluster's registry), and a registry address nothing listens on, so containerd's pull is refused at
    once and no traffic leaves the machine."""
    operators.start(IMAGE_PULL_POLICY="IfNotPresent")
    image = f"127.0.0.1:9/kubetune/missing:{secrets.token_hex(3)}"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("no-image", {
        "image": image, "resources": {"gpusPerNode": 0, "cpu": "100m", "memory": "256Mi"},
        "scheduling": {"nodeSelector": {"kubetune.io/real-node": "true"}, "tolerations": [
            {"key": "kubetune.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]}}))
    status = lambda: cluster.kubectl_json("get", "ftj", "no-image", "-n", namespace).get("status") or {}  # noqa: E731
    pending = wait_until("the pull failure in status", lambda: (
        (s := status()).get("phase") == "Pending" and condition(s, "Ready").get("reason") == "ImagePullBackOff"
        and s), 120)
    [pod] = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    assert pod["spec"]["nodeName"] == cluster.real_node
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] in ("ErrImagePull", "ImagePullBackOff"), waiting
    assert image in condition(pending, "Ready")["message"], pending
    events = wait_until("the ImagePullBackOff event", lambda: warnings(
        cluster, cluster.kubectl_json("get", "ftj", "no-image", "-n", namespace)), 30)
    assert "ImagePullBackOff" in events, events
    verdict = health(cluster.kubectl_json("get", "ftj", "no-image", "-n", namespace))
    assert verdict["status"] == "Degraded" and "ImagePullBackOff" in verdict["message"], verdict


def test_a_run_that_outgrows_its_cache_is_evicted_and_fails_with_the_reason(cluster, real_jobs, tiny_in_s3):
    """A base model bigger than resources.ephemeralStorage: the download fills the cache volume past its sizeLimit
    and the kubelet evicts the pod (within its volume-stats period). Retrying would be evicted again: Failed."""
    name = f"evicted-{secrets.token_hex(2)}"  # the e2e namespace is shared: an earlier run's pods may linger
    model = f"{real_jobs.prefix}/padded-model/"
    source = tiny_in_s3["model"].split("/", 3)[3]
    for item in real_jobs.s3.list_objects_v2(Bucket=cluster.bucket, Prefix=source)["Contents"]:
        real_jobs.s3.copy_object(Bucket=cluster.bucket, Key=model + item["Key"].rsplit("/", 1)[1],
                                 CopySource={"Bucket": cluster.bucket, "Key": item["Key"]})
    with tempfile.TemporaryDirectory() as tmp:
        padding = Path(tmp) / "padding.bin"
        padding.write_bytes(secrets.token_bytes(48 << 20))  # random: no filesystem shrinks it
        real_jobs.s3.upload_file(str(padding), cluster.bucket, model + "padding.bin")
    real_jobs.apply(name, real_jobs.spec(f"s3://{cluster.bucket}/{model}", tiny_in_s3["data"],
                                              resources={"ephemeralStorage": "16Mi"},
                                              hyperparameters={"maxSteps": 100000}))
    failed = real_jobs.wait_phase(name, ("Succeeded", "Failed"), 240)
    assert failed["phase"] == "Failed", failed
    reason = condition(failed, "Failed")
    assert reason["reason"] == "EphemeralStorageExceeded" and 'volume "cache"' in reason["message"], reason
    evicted = [p for p in real_jobs.pods(name) if p["status"].get("reason") == "Evicted"]
    assert evicted and evicted[0]["spec"]["nodeName"] == cluster.real_node
    wait_until("the Job held", lambda: held(cluster, name), 30)  # a retry would be evicted again
    assert "EphemeralStorageExceeded" in wait_until("the event", lambda: warnings(cluster, real_jobs.get(name)),
                                                    30)
    verdict = health(real_jobs.get(name))
    assert verdict["status"] == "Degraded" and "EphemeralStorageExceeded" in verdict["message"], verdict
