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

    def start(self, kubeconfig: Path | None = None, wrap: tuple[str, ...] = (), **env: str) -> Operator:
        """`wrap`: a command the operator runs under (e.g. `unshare` to make it PID 1, as in its container)."""
        identity = f"replica-{len(self.started)}"
        metrics_port, health_port = free_port(), free_port()
        log = self.tmp / f"operator-{identity}.log"
        settings = {"NAMESPACES": self.namespace, "LEASE_NAME": self.lease, "IDENTITY": identity,
                    "LEASE_DURATION_SECONDS": "4", "METRICS_PORT": str(metrics_port),
                    "HEALTH_PORT": str(health_port), "PROGRESS_INTERVAL_SECONDS": "1",
                    "POD_ANNOTATION_PREFIXES": "kwok.kubetune.io/", "TRAINER_IMAGE": "kubetune/trainer:test", **env}
        environment = dict(os.environ, KUBECONFIG=str(kubeconfig or self.cluster.operator_kubeconfig),
                           **{f"KUBETUNE_OPERATOR_{k}": v for k, v in settings.items()})
        proc = subprocess.Popen([*wrap, sys.executable, "-m", "kubetune.operator"], cwd=ROOT, env=environment,
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


def gpu_and_queue_state(cluster) -> str:
    """Who holds the kwok GPU nodes and the ClusterQueue's quota: printed beside a failed Kueue or gang test, whose
    usual suspect is another test's pods or Workloads that have not gone yet."""
    lines = ["pods holding GPUs (namespace/name node phase deleting):"]
    for pod in cluster.kubectl_json("get", "pods", "-A")["items"]:
        gpus = sum(int((c.get("resources", {}).get("requests") or {}).get("nvidia.com/gpu", 0))
                   for c in pod["spec"]["containers"])
        if gpus:
            m = pod["metadata"]
            lines.append(f"  {m['namespace']}/{m['name']} gpus={gpus} node={pod['spec'].get('nodeName')} "
                         f"phase={pod['status'].get('phase')} deleting={m.get('deletionTimestamp')}")
    lines.append("workloads (namespace/name: conditions):")
    for w in cluster.kubectl_json("get", "workloads", "-A")["items"]:
        conditions = ", ".join(f"{c['type']}={c['status']}({c.get('reason')})" for c in
                               (w.get("status") or {}).get("conditions") or [])
        lines.append(f"  {w['metadata']['namespace']}/{w['metadata']['name']}: {conditions}")
    queue = cluster.kubectl_json("get", "clusterqueues")["items"]
    lines += [f"clusterqueue {q['metadata']['name']}: {json.dumps((q.get('status') or {}).get('flavorsUsage'))}"
              for q in queue]
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "queue" in item.fixturenames:
        try:
            report.sections.append(("GPUs and Kueue at the failure",
                                    gpu_and_queue_state(item.funcargs["cluster"])))
        except Exception as error:  # the dump must never hide the failure itself
            report.sections.append(("GPUs and Kueue at the failure", f"could not read: {error!r}"))
