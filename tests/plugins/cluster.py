"""pytest plugin: the local cluster from `hack/cluster`, brought up once per test run.

Tests that need it take the `cluster`, `namespace` or `s3` fixture and carry the `cluster` marker.
A cluster that `hack/cluster status` reports healthy is reused and left running; one this plugin
started is torn down at the end of the session (set KUBETUNE_KEEP_CLUSTER=1 to keep it). If `up` fails
the tests error out: nothing is skipped for lack of the cluster.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubetune.testing import cluster_env

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "hack" / "cluster"


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{shlex.join(self.cmd)} exited {self.returncode}: {(self.stderr or '').strip()}"


@dataclass(frozen=True)
class Cluster:
    """What a test needs to talk to the local cluster; `env` holds every `hack/cluster env` variable."""

    env: dict[str, str]
    started_here: bool = field(default=False, compare=False)

    kubeconfig = property(lambda self: Path(self.env["KUBECONFIG"]))
    operator_kubeconfig = property(lambda self: Path(self.env["KUBETUNE_OPERATOR_KUBECONFIG"]))
    s3_endpoint = property(lambda self: self.env["AWS_ENDPOINT_URL"])
    s3_access_key = property(lambda self: self.env["AWS_ACCESS_KEY_ID"])
    s3_secret_key = property(lambda self: self.env["AWS_SECRET_ACCESS_KEY"])
    s3_region = property(lambda self: self.env["AWS_REGION"])
    bucket = property(lambda self: self.env["KUBETUNE_TEST_BUCKET"])
    prometheus_url = property(lambda self: self.env["PROMETHEUS_URL"])
    prom_targets_file = property(lambda self: Path(self.env["KUBETUNE_PROM_TARGETS_FILE"]))
    kubectl_path = property(lambda self: Path(self.env["KUBETUNE_KUBECTL"]))
    helm_path = property(lambda self: Path(self.env["KUBETUNE_HELM"]))
    state_dir = property(lambda self: Path(self.env["KUBETUNE_CLUSTER_DIR"]))
    # The real kubelet node (hack/node.py) and the S3 endpoint as pods on it reach MinIO; None without it.
    real_node = property(lambda self: self.env.get("KUBETUNE_REAL_NODE"))
    pod_s3_endpoint = property(lambda self: self.env.get("KUBETUNE_CLUSTER_S3_ENDPOINT"))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
        """Runs kubectl against the cluster (admin unless `kubeconfig` is given); text output captured."""
        cmd = [str(self.kubectl_path), f"--kubeconfig={kubeconfig or self.kubeconfig}", *map(str, args)]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def api_client(self, operator: bool = False):
        """A `kubernetes` Python client ApiClient (admin, or the operator's ServiceAccount)."""
        import kubernetes

        config = self.operator_kubeconfig if operator else self.kubeconfig
        return kubernetes.config.new_client_from_config(config_file=str(config))

    def add_scrape_target(self, address: str, **labels: str) -> None:
        """Adds `host:port` to Prometheus' file_sd targets (job="kubetune"); picked up within seconds."""
        self._edit_targets(lambda groups: groups + [{"targets": [address], "labels": labels}])

    def remove_scrape_target(self, address: str) -> None:
        self._edit_targets(lambda groups: [g for g in groups if address not in g["targets"]])

    def _edit_targets(self, change) -> None:
        path = self.prom_targets_file
        with open(path.with_suffix(".lock"), "w") as lock:  # several writers: tests, a local operator
            fcntl.flock(lock, fcntl.LOCK_EX)
            groups = change(json.loads(path.read_text()))
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups, indent=2))
            tmp.replace(path)  # atomic: Prometheus never reads half a file


def wait_for(what: str, probe, timeout: float = 60, interval: float = 0.3):
    """Polls `probe` until it returns something truthy; fails naming `what` and the last value seen."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def _script(command: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER_SCRIPT), command], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), **kw)


def read_env(env: dict | None = None) -> dict[str, str]:
    """Parses the `export K='V'` lines of `hack/cluster env`."""
    return cluster_env(CLUSTER_SCRIPT, env)


def start_cluster(env: dict | None = None) -> bool:
    """Brings the cluster up unless it is healthy already; returns whether it started it."""
    if _script("status", env).returncode == 0:
        return False
    up = _script("up", env)
    if up.returncode != 0:
        raise RuntimeError(f"hack/cluster up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-6000:]}")
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the local cluster from hack/cluster (one per run)")


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    started = start_cluster()
    yield Cluster(env=read_env(), started_here=started)
    if started and os.environ.get("KUBETUNE_KEEP_CLUSTER") != "1":
        down = _script("down")
        assert down.returncode == 0, f"hack/cluster down failed:\n{down.stderr}"


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """A fresh namespace enforcing the PodSecurity `restricted` profile, deleted after the test."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + secrets.token_hex(3)
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "kubetune.io/test": "true"}}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
    deadline = time.monotonic() + 30  # pods are refused until the `default` ServiceAccount exists
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name} after 30s"
        time.sleep(0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def s3(cluster: Cluster):
    """A boto3 S3 client for MinIO; the bucket `cluster.bucket` exists."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=cluster.s3_endpoint, aws_access_key_id=cluster.s3_access_key,
                        aws_secret_access_key=cluster.s3_secret_key, region_name=cluster.s3_region,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))
