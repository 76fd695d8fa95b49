"""The local cluster from hack/cluster does what the operator tests rely on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.parse
import urllib.request

import pytest

from tests.plugins.cluster import CLUSTER_SCRIPT, Cluster, read_env
from tests.plugins.cluster import wait_for as wait_until

pytestmark = pytest.mark.cluster

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
# What the PodSecurity `restricted` profile demands of every container.
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}




def gpu_job(name: str, annotations: dict | None = None) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": annotations or {}},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"nvidia.com/gpu.product": GPU_PRODUCT},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "trainer", "image": "kubetune/trainer:test", "securityContext": RESTRICTED,
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
            }}},
    }


def test_kwok_gpu_nodes(cluster: Cluster):
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    gpu = [n for name, n in nodes.items() if name.startswith("gpu-node-")]
    assert len(gpu) == 3 and "cpu-node-0" in nodes
    for node in gpu:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_PRODUCT
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
    for node in nodes.values():
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", node["metadata"]["name"]


def test_operator_kubeconfig_is_the_service_account(cluster: Cluster):
    who = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=cluster.operator_kubeconfig)
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == \
        "system:serviceaccount:kubetune-system:kubetune-operator"


def test_job_on_gpu_node_succeeds(cluster: Cluster, namespace: str):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(gpu_job("ok")))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/ok", "--timeout=60s")
    pod = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "job-name=ok")["items"][0]
    assert pod["spec"]["nodeName"].startswith("gpu-node-")
    assert pod["status"]["phase"] == "Succeeded"


def test_job_fails_with_exit_code_and_message(cluster: Cluster, namespace: str):
    job = gpu_job("boom", {"kwok.kubetune.io/exit-code": "3", "kwok.kubetune.io/run-seconds": "1",
                           "kwok.kubetune.io/termination-message": '{"reason": "NaNLoss", "step": 7}'})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Failed", "job/boom", "--timeout=60s")
    pod = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "job-name=boom")["items"][0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["phase"] == "Failed"
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert json.loads(terminated["message"]) == {"reason": "NaNLoss", "step": 7}


def test_pod_can_be_oom_killed(cluster: Cluster, namespace: str):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "oom", "annotations": {
        "kwok.kubetune.io/exit-code": "137", "kwok.kubetune.io/reason": "OOMKilled"}},
        "spec": gpu_job("unused")["spec"]["template"]["spec"]}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    cluster.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.phase}=Failed", "pod/oom", "--timeout=60s")
    terminated = cluster.kubectl_json("get", "pod", "oom", "-n", namespace)[
        "status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")


def test_owner_reference_garbage_collection(cluster: Cluster, namespace: str):
    parent = cluster.kubectl_json("create", "configmap", "parent", "-n", namespace)
    child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "child", "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": parent["metadata"]["uid"]}]}}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(child))
    cluster.kubectl("delete", "configmap", "parent", "-n", namespace)
    wait_until("the garbage collector to delete the child", lambda: cluster.kubectl(
        "get", "configmap", "child", "-n", namespace, check=False).returncode != 0)


def test_pod_security_restricted_rejects_privileged_pod(cluster: Cluster, namespace: str):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"}, "spec": {"containers": [
        {"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in result.stderr
    assert "privileged" in result.stderr


def test_s3_round_trip_with_multipart(cluster: Cluster, s3, request):
    prefix = f"cluster-tests/{request.node.name}-{os.getpid()}/"
    s3.put_object(Bucket=cluster.bucket, Key=prefix + "small.txt", Body=b"hello")
    assert s3.get_object(Bucket=cluster.bucket, Key=prefix + "small.txt")["Body"].read() == b"hello"

    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1024)]  # S3 parts but the last are >= 5 MiB
    upload = s3.create_multipart_upload(Bucket=cluster.bucket, Key=prefix + "big.bin")
    etags = [s3.upload_part(Bucket=cluster.bucket, Key=prefix + "big.bin", UploadId=upload["UploadId"],
                            PartNumber=i, Body=body)["ETag"] for i, body in enumerate(parts, start=1)]
    s3.complete_multipart_upload(
        Bucket=cluster.bucket, Key=prefix + "big.bin", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": i} for i, e in enumerate(etags, start=1)]})
    assert s3.get_object(Bucket=cluster.bucket, Key=prefix + "big.bin")["Body"].read() == b"".join(parts)

    listed = s3.list_objects_v2(Bucket=cluster.bucket, Prefix=prefix)["Contents"]
    assert sorted(o["Key"] for o in listed) == [prefix + "big.bin", prefix + "small.txt"]
    s3.delete_objects(Bucket=cluster.bucket, Delete={"Objects": [{"Key": o["Key"]} for o in listed]})


def test_prometheus_scrapes_a_file_sd_target(cluster: Cluster):
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    Counter("kubetune_cluster_test", "scraped by the local Prometheus", registry=registry).inc()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    address = f"127.0.0.1:{server.server_port}"
    cluster.add_scrape_target(address, component="cluster-test")
    try:
        query = urllib.parse.urlencode({"query": f'up{{instance="{address}",component="cluster-test"}}'})

        def up() -> bool:
            with urllib.request.urlopen(f"{cluster.prometheus_url}/api/v1/query?{query}", timeout=5) as resp:
                result = json.load(resp)["data"]["result"]
            return bool(result) and result[0]["value"][1] == "1"

        wait_until(f"Prometheus to scrape {address}", up, timeout=60)
    finally:
        cluster.remove_scrape_target(address)
        server.shutdown()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in os.scandir("/proc"):
        try:
            if proc.name.isdigit() and text.encode() in open(f"{proc.path}/cmdline", "rb").read():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def test_second_cluster_up_and_down_leaves_nothing_behind(cluster: Cluster, tmp_path):
    """A second cluster (own state dir, shifted ports) comes up warm; `down` leaves no process or port."""
    state = tmp_path / "second"
    env = {"KUBETUNE_CLUSTER_DIR": str(state), "KUBETUNE_CLUSTER_PORT_OFFSET": "100"}
    run = lambda cmd: subprocess.run([str(CLUSTER_SCRIPT), cmd], env=dict(os.environ, **env),
                                     capture_output=True, text=True, timeout=300)
    ports = [int(line.split()[1]) for line in run("ports").stdout.splitlines()]
    assert not any(map(_listening, ports)), "the second cluster's ports are taken before it starts"
    try:
        up = run("up")
        assert up.returncode == 0, up.stderr[-4000:]
        second = read_env(env)
        nodes = subprocess.run([second["KUBETUNE_KUBECTL"], f"--kubeconfig={second['KUBECONFIG']}", "get",
                                "nodes", "-o", "name"], capture_output=True, text=True, check=True).stdout
        assert "node/gpu-node-0" in nodes
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert run("status").returncode != 0
    assert [p for p in ports if _listening(p)] == []
    assert _processes_mentioning(str(state)) == []
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"  # the session cluster is untouched
