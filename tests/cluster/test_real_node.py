"""The real node of hack/cluster (hack/node.py): a kubelet running containers, Services, and MinIO for pods."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.cluster.test_cluster import RESTRICTED, wait_until
from tests.plugins.cluster import CLUSTER_SCRIPT, Cluster

pytestmark = pytest.mark.cluster


def image_ref(name: str) -> str:
    out = subprocess.run([str(CLUSTER_SCRIPT.parent / "images"), "ref", name], check=True, capture_output=True,
                         text=True).stdout
    return out.strip().splitlines()[-1]


def busybox_pod(cluster: Cluster, name: str, script: str) -> dict:
    """A pod for the real node from the sandbox image (busybox), as PodSecurity `restricted` demands."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "nodeSelector": {"kubetune.io/real-node": "true"},
        "tolerations": [{"key": "kubetune.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{"name": "c", "image": image_ref("pause"), "imagePullPolicy": "Never",
                        "command": ["/bin/busybox", "sh", "-c", script],
                        "securityContext": {**RESTRICTED, "runAsUser": 65535, "readOnlyRootFilesystem": True}}]}}


def finished(cluster: Cluster, namespace: str, name: str) -> dict | None:
    pod = cluster.kubectl_json("get", "pod", name, "-n", namespace)
    return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None


def test_real_node_is_registered_tainted_and_ready(cluster: Cluster):
    assert cluster.real_node
    node = cluster.kubectl_json("get", "node", cluster.real_node)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.34.4" and info["containerRuntimeVersion"].startswith("containerd://1.6")
    assert node["metadata"]["labels"]["kubetune.io/real-node"] == "true"
    assert {"key": "kubetune.io/real-node", "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert "nvidia.com/gpu" not in node["status"]["allocatable"]
    assert next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"


def test_a_restricted_pod_runs_in_a_container_and_reaches_minio_and_the_api(cluster: Cluster, namespace: str):
    script = (f"wget -q -O /dev/null {cluster.pod_s3_endpoint}/minio/health/ready && echo s3-ok; "
              "wget -q -O - --no-check-certificate https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version"
              " | grep -o '\"gitVersion\": *\"[^\"]*\"'; echo done > /dev/termination-log; exit 3")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(busybox_pod(cluster, "probe", script)))
    pod = wait_until("the probe pod to finish", lambda: finished(cluster, namespace, "probe"), 120)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["spec"]["nodeName"] == cluster.real_node
    assert pod["status"]["podIP"].startswith("10.88.")
    assert terminated["exitCode"] == 3 and terminated["message"].strip() == "done"
    logs = cluster.kubectl("logs", "-n", namespace, "probe").stdout  # through the API server to the kubelet
    assert "s3-ok" in logs and '"v1.34.4"' in logs, logs


def test_pods_meant_for_kwok_never_land_on_the_real_node(cluster: Cluster, namespace: str):
    pod = busybox_pod(cluster, "untolerated", "true")
    del pod["spec"]["tolerations"]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    unschedulable = wait_until("the scheduler to refuse it", lambda: next(
        (c for c in cluster.kubectl_json("get", "pod", "untolerated", "-n", namespace)["status"].get(
            "conditions", []) if c["type"] == "PodScheduled" and c["status"] == "False"), None), 60)
    assert "untolerated taint" in unschedulable["message"]
