"""Captures real FineTuneJob statuses for the Argo CD health tests: runs the operator against the local cluster
(`hack/cluster up` first; KUBETUNE_CLUSTER_* select which), drives one FineTuneJob to each stage with kwok's pod
annotations (for `running-progress`, the trainer's gauges are served on the kwok pod's IP, where the operator reads
them, by this script: kwok pods run nothing), and writes `kubectl get ftj -o yaml` of each to argocd/.../FineTuneJob/testdata/<stage>.yaml.

    python -m hack.observability.capture_health_testdata
"""
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubetune.api import contract

from tests.observability.argocd import HEALTH_DIR, health
from tests.operator.conftest import Operators, manifest, wait_for
from tests.operator.test_operator_cluster import kwok
from tests.plugins.cluster import Cluster, read_env

ROOT = Path(__file__).parents[2]
SUMMARY = {"runId": "?", "stopReason": "EarlyStopped", "steps": 40, "totalSteps": 100, "epochs": 2.0,
           "eval": {"loss": 1.5}, "baseline": {"loss": 2.5}, "best": {"name": "loss", "value": 1.4, "step": 30}}


STAGES = {
    # name: (spec patch, kwok annotations, phase to wait for)
    "queued": ({"scheduling": {"queueName": "team-a-queue"}}, kwok(600), "Queued"),
    "suspended": ({"suspend": True}, kwok(600), "Suspended"),
    "unschedulable": ({"resources": {"gpusPerNode": 1, "gpuProduct": "NVIDIA-B300"}}, kwok(600), "Pending"),
    "running": ({"resources": {"gpusPerNode": 1}}, kwok(600), "Running"),
    "succeeded": ({"resources": {"gpusPerNode": 1}}, kwok(2, message=json.dumps(SUMMARY)), "Succeeded"),
    "failed": ({"runPolicy": {"backoffLimit": 0}}, kwok(1, exit_code=137, reason="OOMKilled"), "Failed"),
}


def main() -> None:
    cluster = Cluster(env=read_env())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("apply", "-k", str(ROOT / "config" / "rbac"))
    namespace = f"argocd-health-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", namespace)
    ops = Operators(cluster, namespace, Path(tempfile.mkdtemp()))
    operator = ops.start()
    out = HEALTH_DIR / "testdata"
    out.mkdir(exist_ok=True)

    def phase(name):
        st = cluster.kubectl_json("get", "ftj", name, "-n", namespace).get("status") or {}
        return st.get("phase")

    def capture(stage: str, name: str) -> None:
        doc = yaml.safe_load(cluster.kubectl("get", "ftj", name, "-n", namespace, "-o", "yaml").stdout)
        doc["metadata"].pop("managedFields", None)
        (out / f"{stage}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        print(f"{stage}: {health(doc)}", file=sys.stderr)

    def capture_progress(name: str) -> None:
        """The trainer's gauges served on the pod's IP, as the trainer serves them, for the operator to read."""
        pod = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={name}-g1")
        registry = CollectorRegistry()
        for metric, value in ((contract.METRIC_STEP, 300), (contract.METRIC_TOTAL_STEPS, 1200),
                              (contract.METRIC_TRAIN_LOSS, 1.8421), (contract.METRIC_EVAL_LOSS, 1.90349),
                              (contract.METRIC_ETA_SECONDS, 2700), (contract.METRIC_TOKENS_PER_SECOND, 5120)):
            Gauge(metric, metric, registry=registry).set(value)
        server, _ = start_http_server(contract.METRICS_PORT, addr=pod["items"][0]["status"]["podIP"], registry=registry)
        try:
            wait_for("progress", lambda: (cluster.kubectl_json("get", "ftj", name, "-n", namespace)["status"]
                                          .get("progress") or {}).get("step") == 300, timeout=60)
            capture("running-progress", name)
        finally:
            server.shutdown()

    try:
        for stage, (spec, notes, want) in STAGES.items():
            name = stage
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(name, spec, notes))
            wait_for(f"{name} {want}", lambda: phase(name) == want, timeout=90)
            if stage == "unschedulable":  # the scheduler's verdict reaches the status a moment later
                wait_for("Unschedulable", lambda: "Unschedulable" in json.dumps(
                    cluster.kubectl_json("get", "ftj", name, "-n", namespace)["status"]["conditions"]), timeout=60)
            time.sleep(1)
            capture(stage, name)
            if stage == "running":
                capture_progress(name)
        # A spec edit the operator has not seen yet: observedGeneration is behind metadata.generation.
        operator.stop()
        cluster.kubectl("patch", "ftj", "running", "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"hyperparameters": {"learningRate": 1e-4}}}))
        capture("stale-generation", "running")
        # ...and once it has: a new run, the old one in status.runs.
        ops.start()
        status = lambda: cluster.kubectl_json("get", "ftj", "running", "-n", namespace)["status"]  # noqa: E731
        wait_for("generation 2 running", lambda: (lambda s: s.get("observedGeneration") == 2
                                                  and s.get("phase") == "Running" or print(s, file=sys.stderr))(
            status()), timeout=90, interval=5)
        time.sleep(1)
        capture("new-run", "running")
    finally:
        ops.stop_all()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


if __name__ == "__main__":
    main()
