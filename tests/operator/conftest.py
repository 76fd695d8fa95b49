"""Runs the real operator (`python -m kubetune.operator`) against the local cluster, as its ServiceAccount with
the RBAC of config/rbac/, watching only the test's namespace."""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.api.cases import make_job
from tests.plugins.cluster import wait_for  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Operator:
    proc: subprocess.Popen
    metrics_port: int
    health_port: int
    log: Path
    identity: str

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Operators:
    """Starts operator replicas sharing one Lease (unique to the test)."""

    cluster: object
    namespace: str
    tmp: Path
    lease: str = field(default_factory=lambda: f"kubetune-test-{secrets.token_hex(3)}")
    started: list[Operator] = field(default_factory=list)

    def start(self, **env: str) -> Operator:
        identity = f"replica-{len(self.started)}"
        metrics_port, health_port = free_port(), free_port()
        log = self.tmp / f"operator-{identity}.log"
        settings = {"NAMESPACES": self.namespace, "LEASE_NAME": self.lease, "IDENTITY": identity,
                    "LEASE_DURATION_SECONDS": "4", "METRICS_PORT": str(metrics_port),
                    "HEALTH_PORT": str(health_port), "PROGRESS_INTERVAL_SECONDS": "1",
                    "POD_ANNOTATION_PREFIXES": "kwok.kubetune.io/", "TRAINER_IMAGE": "kubetune/trainer:test", **env}
        environment = dict(os.environ, KUBECONFIG=str(self.cluster.operator_kubeconfig),
                           **{f"KUBETUNE_OPERATOR_{k}": v for k, v in settings.items()})
        proc = subprocess.Popen([sys.executable, "-m", "kubetune.operator"], cwd=ROOT, env=environment,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        operator = Operator(proc, metrics_port, health_port, log, identity)
        self.started.append(operator)
        return operator

    def stop_all(self) -> None:
        for operator in self.started:
            operator.stop()


@pytest.fixture
def operators(cluster, namespace, tmp_path, finetunejob_crd):
    cluster.kubectl("apply", "-k", str(ROOT / "config" / "rbac"))
    cluster.kubectl("apply", "-f", str(Path(__file__).parent / "rbac-extra.yaml"))
    ops = Operators(cluster, namespace, tmp_path)
    yield ops
    ops.stop_all()
    cluster.kubectl("delete", "lease", ops.lease, "-n", "kubetune-system", "--ignore-not-found", check=False)


@pytest.fixture
def operator(operators) -> Operator:
    return operators.start()


def manifest(name: str, spec: dict | None = None, annotations: dict | None = None) -> str:
    doc = make_job({"spec": spec or {}}, name=name)
    if annotations:
        doc["metadata"]["annotations"] = annotations
    return json.dumps(doc)


