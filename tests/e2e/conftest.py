"""The real path: the operator deployed in the cluster from its image (`hack/deploy`, what `make deploy` runs),
FineTuneJobs applied with kubectl, trainer pods running in containers on the real node, S3 in MinIO."""
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.api.cases import _merge
from tests.plugins.cluster import wait_for as wait_until  # noqa: F401  (the e2e tests import it from here)
from tests.trainer.conftest import chat_rows, tiny_model  # noqa: F401  (fixture)

ROOT = Path(__file__).parents[2]
E2E_NAMESPACE = "kubetune-e2e"  # watched by the deployed operator (hack/deploy); restricted PodSecurity


@pytest.fixture(scope="session")
def deployed(cluster) -> dict:
    """Builds the images (cached), pushes them and the chart to the cluster's registry and installs from oci://:
    `make deploy`."""
    assert cluster.real_node, "the local cluster has no real node (hack/cluster up)"
    proc = subprocess.run([str(ROOT / "hack" / "deploy")], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **cluster.env})
    assert proc.returncode == 0, f"hack/deploy failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])




class RealJobs:
    """Applies FineTuneJobs for the real node and reads them back; deletes what it applied."""

    def __init__(self, cluster, s3, prefix: str):
        self.cluster, self.s3, self.prefix = cluster, s3, prefix
        self.applied: list[str] = []

    def upload(self, local: Path, key: str) -> str:
        self.s3.upload_file(str(local), self.cluster.bucket, f"{self.prefix}/{key}")
        return f"s3://{self.cluster.bucket}/{self.prefix}/{key}"

    def spec(self, model_uri: str, data: dict[str, str], **patch) -> dict:
        spec = {
            "baseModel": {"uri": model_uri},
            "dataset": {**data, "maxSeqLength": 64, "packing": False},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "hyperparameters": {"maxSteps": 40, "batchSize": 8, "microBatchSize": 8, "learningRate": 3e-3,
                                "warmupRatio": 0.0},
            "evaluation": {"everySteps": 10, "baseline": True},
            "output": {"uri": f"s3://{self.cluster.bucket}/{self.prefix}/out/"},
            "storage": {"endpoint": self.cluster.pod_s3_endpoint,
                        "region": self.cluster.s3_region, "secretRef": {"name": "s3-credentials"}},
            "resources": {"gpusPerNode": 0, "cpu": "500m", "memory": "3Gi", "sharedMemory": "64Mi"},
            "scheduling": {"nodeSelector": {"kubetune.io/real-node": "true"},
                           "tolerations": [{"key": "kubetune.io/real-node", "operator": "Exists",
                                            "effect": "NoSchedule"}]},
            "runPolicy": {"backoffLimit": 2},
        }
        _merge(spec, patch)
        return spec

    def apply(self, name: str, spec: dict) -> None:
        doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
               "metadata": {"name": name, "namespace": E2E_NAMESPACE}, "spec": spec}
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
        self.applied.append(name)

    def get(self, name: str) -> dict:
        return self.cluster.kubectl_json("get", "finetunejob", name, "-n", E2E_NAMESPACE)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def pods(self, name: str) -> list[dict]:
        return self.cluster.kubectl_json("get", "pods", "-n", E2E_NAMESPACE,
                                         "-l", f"kubetune.io/finetunejob={name}")["items"]

    def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float = 600) -> dict:
        return wait_until(f"{name} to reach {phases}",
                          lambda: (s := self.status(name)).get("phase") in phases and s, timeout)

    def objects(self, prefix: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.cluster.bucket, Prefix=f"{self.prefix}/{prefix}")
        return [o["Key"] for o in listed.get("Contents", [])]

    def logs(self, name: str) -> str:
        out = []
        for pod in self.pods(name):
            proc = self.cluster.kubectl("logs", "-n", E2E_NAMESPACE, pod["metadata"]["name"], "--tail=40",
                                        check=False)
            out.append(f"--- {pod['metadata']['name']}\n{proc.stdout}{proc.stderr}")
        return "\n".join(out)

    def cleanup(self) -> None:
        for name in self.applied:
            self.cluster.kubectl("delete", "finetunejob", name, "-n", E2E_NAMESPACE, "--wait=false", check=False)


@pytest.fixture
def real_jobs(cluster, s3, deployed):
    jobs = RealJobs(cluster, s3, f"e2e/{secrets.token_hex(4)}")
    yield jobs
    jobs.cleanup()


@pytest.fixture(scope="session")
def tiny_in_s3(cluster, s3, tiny_model, tmp_path_factory) -> dict:  # noqa: F811
    """The tiny Llama and learnable chat splits in MinIO, once per session."""
    prefix = f"e2e-assets/{secrets.token_hex(4)}"
    for path in sorted(tiny_model.iterdir()):
        s3.upload_file(str(path), cluster.bucket, f"{prefix}/model/{path.name}")
    data = {}
    work = tmp_path_factory.mktemp("e2e-data")
    for split, (n, seed) in {"train": (256, 1), "validation": (32, 2), "test": (48, 3)}.items():
        path = work / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(n, seed)))
        s3.upload_file(str(path), cluster.bucket, f"{prefix}/data/{split}.jsonl")
        data[split] = f"s3://{cluster.bucket}/{prefix}/data/{split}.jsonl"
    return {"model": f"s3://{cluster.bucket}/{prefix}/model/", "data": data, "prefix": prefix}
