"""`make deploy` installs the way a user installs from a registry: both images and the chart are pushed to the
local cluster's OCI registry (hack/registry.py), helm installs from oci://, and the real node's containerd pulls
both images from the registry (its imageIDs are the registry's manifest digests)."""
import base64
import gzip
import io
import json
import subprocess
import sys
import tarfile
import urllib.request

import pytest

from tests.e2e.conftest import ROOT, wait_until
from tests.e2e.test_operator_in_cluster import operator_pods

sys.path.insert(0, str(ROOT / "hack"))
import registry  # noqa: E402  (hack/registry.py)

pytestmark = pytest.mark.cluster

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


def fetch(address: str, path: str, accept: str = "*/*") -> bytes:
    request = urllib.request.Request(f"http://{address}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.read()


def served(cluster, ref: str) -> tuple[str, str]:
    """(repository, the digest the registry serves for ref's tag) of an image ref in the cluster's registry."""
    address = cluster.env["KUBETUNE_REGISTRY"]
    repository, _, tag = ref.rpartition(":")
    assert repository.startswith(f"{address}/"), f"{ref} is not in the cluster's registry {address}"
    digest = registry.manifest_digest(address, repository.removeprefix(f"{address}/"), tag)
    assert digest, f"the registry has no {ref}"
    return repository, digest


def test_the_operator_pods_run_the_image_the_registry_serves(cluster, deployed):
    repository, digest = served(cluster, deployed["operatorImage"])
    assert repository == f"{cluster.env['KUBETUNE_REGISTRY']}/kubetune/operator"
    assert digest == deployed["operatorDigest"]
    pods = operator_pods(cluster, deployed["namespace"])
    assert pods
    for pod in pods:
        assert pod["spec"]["nodeName"] == cluster.real_node
        [container] = pod["spec"]["containers"]
        assert container["image"] == deployed["operatorImage"] and container["imagePullPolicy"] == "IfNotPresent"
        [status] = pod["status"]["containerStatuses"]
        # containerd reports the repo digest of what it pulled: only a pull from the registry gives this name.
        assert status["imageID"] == f"{repository}@{digest}", status


def test_the_real_node_pulls_the_trainer_image_from_the_registry(cluster, deployed, namespace):
    repository, digest = served(cluster, deployed["trainerImage"])
    assert digest == deployed["trainerDigest"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "trainer-image"}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "nodeSelector": {"kubetune.io/real-node": "true"},
        "tolerations": [{"key": "kubetune.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "trainer", "image": deployed["trainerImage"], "imagePullPolicy": "IfNotPresent",
            "command": ["python", "-c", "import kubetune.trainer, torch; print('trainer-image-ok', torch.__version__)"],
            "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    done = wait_until("the trainer image's pod to finish", lambda: (p := cluster.kubectl_json(
        "get", "pod", "trainer-image", "-n", namespace))["status"].get("phase") in ("Succeeded", "Failed") and p,
        600)  # a first pull of the trainer image takes a while
    logs = cluster.kubectl("logs", "-n", namespace, "trainer-image").stdout
    assert done["status"]["phase"] == "Succeeded" and "trainer-image-ok" in logs, (done["status"], logs)
    [status] = done["status"]["containerStatuses"]
    assert status["imageID"] == f"{repository}@{digest}", status


def test_the_helm_release_is_the_chart_pulled_from_the_registry(cluster, deployed):
    address = cluster.env["KUBETUNE_REGISTRY"]
    assert deployed["chart"] == f"oci://{address}/charts/kubetune"
    version = deployed["chartVersion"]
    listed = subprocess.run([str(cluster.helm_path), f"--kubeconfig={cluster.kubeconfig}", "list", "-n",
                             deployed["namespace"], "-o", "json"], check=True, capture_output=True, text=True)
    [release] = json.loads(listed.stdout)
    assert release["chart"] == f"kubetune-{version}" and release["status"] == "deployed"

    # The chart in the registry: an OCI artifact of helm's media types, under the digest hack/deploy pushed.
    assert registry.manifest_digest(address, "charts/kubetune", version) == deployed["chartDigest"]
    manifest = json.loads(fetch(address, f"charts/kubetune/manifests/{version}", OCI_MANIFEST))
    assert manifest["config"]["mediaType"] == HELM_CONFIG
    [layer] = [layer for layer in manifest["layers"] if layer["mediaType"] == HELM_CHART]
    with tarfile.open(fileobj=io.BytesIO(fetch(address, f"charts/kubetune/blobs/{layer['digest']}"))) as tgz:
        pushed = {m.name.removeprefix("kubetune/"): tgz.extractfile(m).read()
                  for m in tgz.getmembers() if m.name.startswith("kubetune/templates/")}

    # The release as helm stored it (the Secret of the deployed revision): the same chart, template for template.
    [secret] = cluster.kubectl_json("get", "secret", "-n", deployed["namespace"], "-l",
                                    f"owner=helm,name={deployed['release']},status=deployed")["items"]
    stored = json.loads(gzip.decompress(base64.b64decode(base64.b64decode(secret["data"]["release"]))))
    assert stored["chart"]["metadata"]["version"] == version
    assert {t["name"]: base64.b64decode(t["data"]) for t in stored["chart"]["templates"]} == pushed
    assert stored["config"]["image"]["repository"] == f"{address}/kubetune/operator"
    assert stored["config"]["trainer"]["image"]["repository"] == f"{address}/kubetune/trainer"

    # And helm fetched it from there: the registry's access log has helm's pull of that manifest.
    log = (cluster.state_dir / "logs" / "registry.log").read_text()
    assert any(f'"GET /v2/charts/kubetune/manifests/{version} HTTP/1.1" 200' in line and '"Helm/' in line
               for line in log.splitlines()), "no pull of the chart by helm in the registry's log"

