"""Stand-in for the trainer of a Katib trial on kwok (hack/katib.py demo; docs/katib.md#the-objective).

kwok runs no containers, so no trainer runs in a trial's pod. This watches the namespace's pods: for each trainer
pod (pending or running) into which Katib's pod webhook put KATIB_TRIAL_NAME, it does what the trainer does as a
Katib trial (kubetune/trainer/katib.py), with the trainer's own code: it reads the trial name and
KATIB_DB_MANAGER_ADDRESS as the container would see them (the operator puts the address into every trainer pod
from KUBETUNE_OPERATOR_TRAINER_ENV) and pushes `eval_loss` and `loss` with katib.Reporter before the pod ends, so
the value is there before the FineTuneJob succeeds. Only the value is made up: a bowl in log10(learningRate),
lowest at 3e-4, plus a little for a larger LoRA rank, enough for TPE to have a shape. A trainer on a real node
pushes its real metrics the same way.

Usage: python katib_push.py NAMESPACE   (KUBECONFIG, KUBETUNE_KUBECTL from the environment; PYTHONPATH: this
checkout, and grpcio installed: kubetune's `katib` extra)
"""
import json
import math
import os
import re
import subprocess
import sys
import time

from kubetune.trainer import katib


def kubectl_json(*args: str) -> dict:
    out = subprocess.run([os.environ["KUBETUNE_KUBECTL"], *args, "-o", "json"], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def env_value(pod: dict, container: dict, name: str) -> str | None:
    """A variable as the container will see it: a value, or a fieldRef to one of the pod's labels (the webhook
    sets KATIB_TRIAL_NAME from the label `katib.kubeflow.org/trial`)."""
    env = next((e for e in container.get("env", []) if e["name"] == name), None)
    if env is None or "value" in env:
        return (env or {}).get("value")
    path = env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
    match = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
    return pod["metadata"].get("labels", {}).get(match.group(1)) if match else None


def loss(learning_rate: float, rank: int) -> float:
    return round(1.0 + (math.log10(learning_rate) - math.log10(3e-4)) ** 2 / 4 + rank / 320, 4)


def main(namespace: str) -> None:
    pushed: set[str] = set()
    print(f"{time.strftime('%H:%M:%S')} watching {namespace}", flush=True)
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
            container = next((c for c in pod["spec"]["containers"] if c["name"] == "trainer"), None) or {}
            trial = env_value(pod, container, katib.TRIAL_ENV)
            if not trial or trial in pushed:
                continue
            address = env_value(pod, container, katib.ADDRESS_ENV) or katib.DEFAULT_ADDRESS
            job = kubectl_json("get", "finetunejob", trial, "-n", namespace)
            hp, method = job["spec"]["hyperparameters"], job["spec"].get("method", {})
            value = loss(float(hp["learningRate"]), int(method.get("lora", {}).get("r", 16)))
            reporter = katib.Reporter(trial, address)
            reporter.observe({"kind": "eval", "time": time.time(), "step": int(hp.get("maxSteps") or 0),
                              "loss": value})
            if reporter.finish({"eval": {"loss": value}}):
                pushed.add(trial)
            print(f"{time.strftime('%H:%M:%S')} trial {trial} (pod {pod['metadata']['name']}, learningRate="
                  f"{hp['learningRate']}, r={method.get('lora', {}).get('r')}): loss={value} to {address}", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1])
