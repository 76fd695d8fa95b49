"""Stand-in for a trainer that pushes its objective to Katib (hack/katib.py demo; docs/katib.md).

kwok runs no containers, so nothing inside a trial's pod can report. This watches the namespace's pods: for each
trainer pod (pending or running) into which Katib's pod webhook put KATIB_TRIAL_NAME, it pushes `loss` for that
trial to db-manager (the ReportObservationLog call of Katib's Push collector) before the pod ends, so the value is
there before the FineTuneJob succeeds, as a real trainer's would be before it exits. The loss is a made-up bowl
in log10(learningRate), lowest at 3e-4, plus a little for a larger LoRA rank: enough for TPE to have a shape.

It calls the gRPC stub of the kubeflow-katib SDK directly: the SDK's report_metrics() first reads the pod's
namespace from /var/run/secrets/kubernetes.io/serviceaccount/namespace, which a kubetune trainer pod does not
have (automountServiceAccountToken: false), so a trainer would do the same.

Usage: python katib_push.py NAMESPACE DB_MANAGER_ADDRESS   (KUBECONFIG, KUBETUNE_KUBECTL from the environment)
"""
import json
import math
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import grpc
from kubeflow.katib import katib_api_pb2 as pb
from kubeflow.katib import katib_api_pb2_grpc as pb_grpc


def kubectl_json(*args: str) -> dict:
    out = subprocess.run([os.environ["KUBETUNE_KUBECTL"], *args, "-o", "json"], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def trial_name(pod: dict, container: dict) -> str | None:
    """KATIB_TRIAL_NAME as the container will see it: the webhook sets it from the pod's label
    `katib.kubeflow.org/trial` (a fieldRef), not as a value."""
    env = next((e for e in container.get("env", []) if e["name"] == "KATIB_TRIAL_NAME"), None)
    if env is None or "value" in env:
        return (env or {}).get("value")
    path = env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
    match = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
    return pod["metadata"].get("labels", {}).get(match.group(1)) if match else None


def loss(learning_rate: float, rank: int) -> float:
    return round(1.0 + (math.log10(learning_rate) - math.log10(3e-4)) ** 2 / 4 + rank / 320, 4)


def main(namespace: str, address: str) -> None:
    stub = pb_grpc.DBManagerStub(grpc.insecure_channel(address))
    pushed: set[str] = set()
    print(f"{time.strftime('%H:%M:%S')} watching {namespace}, pushing to {address}", flush=True)
    while True:
        try:
            pods = kubectl_json("get", "pods", "-n", namespace)["items"]
        except subprocess.CalledProcessError as e:
            print(f"kubectl: {e.stderr.strip()}", flush=True)
            time.sleep(2)
            continue
        for pod in pods:
            if pod.get("status", {}).get("phase") not in ("Pending", "Running"):
                continue
            container = next((c for c in pod["spec"]["containers"] if c["name"] == "trainer"), None)
            trial = trial_name(pod, container or {})
            if not trial or trial in pushed:
                continue
            job = kubectl_json("get", "finetunejob", trial, "-n", namespace)
            hp, method = job["spec"]["hyperparameters"], job["spec"].get("method", {})
            value = loss(float(hp["learningRate"]), int(method.get("lora", {}).get("r", 16)))
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            stub.ReportObservationLog(pb.ReportObservationLogRequest(
                trial_name=trial, observation_log=pb.ObservationLog(metric_logs=[
                    pb.MetricLog(time_stamp=now, metric=pb.Metric(name="loss", value=str(value)))])), timeout=10)
            pushed.add(trial)
            print(f"{time.strftime('%H:%M:%S')} pushed loss={value} for trial {trial} (pod {pod['metadata']['name']}, "
                  f"learningRate={hp['learningRate']}, r={method.get('lora', {}).get('r')})", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
