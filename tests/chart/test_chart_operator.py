"""The real operator, run as the chart's ServiceAccount with the chart's namespaced RBAC, its admission policy in
force and the environment the chart's Deployment gives it, reconciles a FineTuneJob to Succeeded (kwok pods).

The chart's own operator pods are fake here (kwok nodes run nothing), so the process runs on this machine with a
token of the chart's ServiceAccount: what it may do is exactly what the chart grants.
"""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from tests.api.cases import make_job
from tests.chart.conftest import CHART, ROOT

SUMMARY = {"stopReason": "MaxStepsReached", "steps": 10, "totalSteps": 10, "eval": {"loss": 1.5}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token_kubeconfig(cluster, namespace: str, account: str, path) -> None:
    """The cluster's operator kubeconfig (server, CA) with a token of `namespace/account`."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(cluster.operator_kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))


@pytest.mark.cluster
@pytest.mark.parametrize("discovery", [True, False], ids=["discovery", "no-cluster-role"])
def test_operator_with_the_charts_rbac_and_policy_runs_a_job(cluster, namespace, tmp_path, discovery):
    release = f"kt{secrets.token_hex(3)}"
    system = f"{release}-system"
    account = f"{release}-kubetune-operator"
    helm = [str(cluster.helm_path), "--namespace", system, f"--kubeconfig={cluster.kubeconfig}"]
    values = ["--set", "rbac.scope=namespaces", "--set", f"watchNamespaces={{{namespace}}}",
              "--set", "replicas=1", "--set", "trainer.podAnnotationPrefixes={kwok.kubetune.io/}",
              "--set", "operator.progressIntervalSeconds=1", "--set", f"rbac.discovery={str(discovery).lower()}"]
    cluster.kubectl("create", "namespace", system)
    proc = None
    try:
        subprocess.run([*helm, "install", release, str(CHART), "--take-ownership", *values], check=True,
                       capture_output=True, text=True)
        deployment = cluster.kubectl_json("get", "deployment", account, "-n", system)
        env = {}
        for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
            field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            env[var["name"]] = {"metadata.name": "chart-test-replica", "metadata.namespace": system}.get(field) \
                if field else var.get("value", "")  # the API server drops empty values
        env.update(KUBETUNE_OPERATOR_METRICS_PORT=str(free_port()), KUBETUNE_OPERATOR_HEALTH_PORT=str(free_port()))
        assert env["KUBETUNE_OPERATOR_NAMESPACES"] == namespace
        kubeconfig = tmp_path / "operator.kubeconfig"
        token_kubeconfig(cluster, system, account, kubeconfig)
        log = tmp_path / "operator.log"
        proc = subprocess.Popen([sys.executable, "-m", "kubetune.operator"], cwd=ROOT,
                                env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
                                stdout=log.open("w"), stderr=subprocess.STDOUT)

        job = make_job({"spec": {"resources": {"gpusPerNode": 1}}}, name="chat")
        job["metadata"]["annotations"] = {"kwok.kubetune.io/run-seconds": "2",
                                          "kwok.kubetune.io/termination-message": json.dumps(SUMMARY)}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
        waited = cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/chat", "-n", namespace,
                                 "--timeout=90s", check=False)
        assert waited.returncode == 0, log.read_text()[-4000:]
        # The only Job was created by the operator's identity, so the chart's policy admitted it.
        (trainer,) = cluster.kubectl_json("get", "jobs", "-n", namespace)["items"]
        assert trainer["metadata"]["labels"]["kubetune.io/finetunejob"] == "chat"
        assert cluster.kubectl_json("get", "validatingadmissionpolicy", f"{release}-kubetune-operator-jobs")
        # Nothing it needs in the namespace was refused; without the discovery ClusterRole kopf is refused
        # listing CRDs and namespaces (cluster scope), retries, then falls back to the names it was given.
        refused = [line for line in log.read_text().splitlines() if "forbidden" in line.lower()]
        assert all("at the cluster scope" in line for line in refused), refused[:3]
        assert bool(refused) != discovery, refused[:3]
    finally:
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run([*helm, "uninstall", release, "--ignore-not-found"], capture_output=True)
        cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)
