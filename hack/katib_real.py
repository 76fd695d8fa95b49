"""A Katib Experiment whose trials are FineTuneJobs trained by real trainer pods on the real node, each reporting its
objective to Katib itself (docs/katib.md). Run on the default cluster after `make deploy`:

    .venv/bin/python -m hack.katib_real

It starts Katib as `hack/katib.py up` does, with db-manager listening where the node's pods reach the host
(10.88.0.1), gives the deployed operator's trainer pods KATIB_DB_MANAGER_ADDRESS (helm `trainer.extraEnv`), stages
`make demo`'s SmolLM2 and chatterbot splits, and runs a random search of two learning rates, one trial at a time, in
the operator's restricted namespace. `hack/katib.py down` stops Katib.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hack import katib
from hack.demo import NAMESPACE, clients, manifest, stage
from hack.katib import kubectl

NAME = "smollm2-katib"
NODE_HOST = "10.88.0.1"  # the host, as the real node's pods reach it (hack/node.py's bridge)
LR_SENTINEL = 0.000123456789  # replaced by Katib's placeholder: a number once substituted, never a quoted string


def trial_template(model_uri: str, data: dict[str, str], endpoint: str, region: str) -> str:
    job = manifest(model_uri, data, endpoint, region)
    spec = job["spec"]
    spec["dataset"].pop("test")  # Katib judges the validation loss; a test pass would add a minute a trial
    spec.pop("promotion")  # the gate needs a test set; a trial is judged by Katib here
    spec["hyperparameters"].update(maxSteps=10, learningRate=LR_SENTINEL)
    spec["evaluation"] = {"everySteps": 5, "baseline": False}
    spec["checkpoint"] = {"everySteps": 10}
    spec["output"]["uri"] = f"{spec['output']['uri'].rstrip('/')}-katib/${{trialParameters.trialName}}/"
    text = yaml.safe_dump({"apiVersion": job["apiVersion"], "kind": job["kind"], "spec": spec}, sort_keys=False)
    return text.replace(repr(LR_SENTINEL), "${trialParameters.learningRate}")


def experiment() -> dict:
    doc = katib.experiment(NAME, NAMESPACE)
    doc["spec"].update(algorithm={"algorithmName": "random"}, maxTrialCount=2, parallelTrialCount=1,
                       maxFailedTrialCount=1,
                       parameters=[{"name": "lr", "parameterType": "double",
                                    "feasibleSpace": {"min": "0.0001", "max": "0.003"}}])
    template = doc["spec"]["trialTemplate"]
    template["trialParameters"] = [p for p in template["trialParameters"] if p["name"] != "loraRank"]
    return doc


def main() -> int:
    env, s3, _ = clients()
    os.environ["KATIB_DB_LISTEN"] = "0.0.0.0"  # the node's pods come from the bridge, not loopback
    katib.cmd_up()
    address = f"{NODE_HOST}:{katib.PORTS['db-manager']}"
    helm = [env["KUBETUNE_HELM"], f"--kubeconfig={env['KUBECONFIG']}"]
    version = yaml.safe_load((katib.REPO / "charts" / "kubetune" / "Chart.yaml").read_text())["version"]
    katib.run(*helm, "upgrade", "kubetune", f"oci://{env['KUBETUNE_REGISTRY']}/charts/kubetune", "--version",
              version, "--plain-http", "--reuse-values", "-n", "kubetune", "--wait", "--set-json",
              "trainer.extraEnv=" + json.dumps([{"name": "KATIB_DB_MANAGER_ADDRESS", "value": address}]))
    _, model_uri, _, data = stage(s3, Path(tempfile.mkdtemp(prefix="kubetune-katib-")))
    katib.add_host(f"{NAME}-random.{NAMESPACE}")
    kubectl("label", "namespace", NAMESPACE, "katib.kubeflow.org/metrics-collector-injection=enabled",
            "--overwrite")
    template = trial_template(model_uri, data, env["KUBETUNE_CLUSTER_S3_ENDPOINT"], env["AWS_REGION"])
    katib.apply([{"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{NAME}-trial-template", "namespace": NAMESPACE,
                               "labels": {"katib.kubeflow.org/component": "trial-templates"}},
                  "data": {"finetunejob.yaml": template}}])
    kubectl("delete", "experiment", NAME, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
    started = time.monotonic()
    katib.apply([experiment()])
    print(f"Experiment {NAMESPACE}/{NAME}: random search of the learning rate, 2 trials, FineTuneJobs on the real "
          f"node pushing to Katib's db-manager at {address}", flush=True)
    result = kubectl("wait", "--for=condition=Succeeded", f"experiment/{NAME}", "-n", NAMESPACE,
                     "--timeout=1200s", check=False)
    print(kubectl("get", "experiment,trials,finetunejobs", "-n", NAMESPACE, check=False).stdout)
    status = json.loads(kubectl("get", "experiment", NAME, "-n", NAMESPACE, "-o", "json").stdout).get("status", {})
    print(json.dumps(status.get("currentOptimalTrial"), indent=2))
    print(f"took {(time.monotonic() - started) / 60:.1f} min")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
