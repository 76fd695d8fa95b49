"""What the tests and the scripts under hack/ (demo, benchmarks, capture tools) share, in one public place: a valid
FineTuneJob manifest to patch, the deep merge that patches it, and the local cluster's settings as `hack/cluster
env` prints them. Standard library only; neither the operator nor the trainer imports it.
"""
import copy
import os
import shlex
import subprocess
from pathlib import Path

DELETE = object()
"""A patch value that removes its key (`merge`)."""

BASE_MANIFEST = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "case"},
    "spec": {
        "baseModel": {"uri": "s3://models/tiny/"},
        "dataset": {"train": "s3://datasets/chat/train.jsonl", "validation": "s3://datasets/chat/val.jsonl"},
        "hyperparameters": {"maxSteps": 10, "batchSize": 8, "microBatchSize": 4},
        "output": {"uri": "s3://artifacts/case/"},
    },
}
"""The smallest valid FineTuneJob: every required field, nothing else."""


def merge(into: dict, patch: dict) -> None:
    """Deep-merges `patch` into `into` in place: dicts merge, anything else replaces, DELETE removes the key."""
    for key, value in patch.items():
        if value is DELETE:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def job_manifest(patch: dict | None = None, name: str = "case") -> dict:
    """BASE_MANIFEST named `name`, with `patch` deep-merged in."""
    doc = copy.deepcopy(BASE_MANIFEST)
    doc["metadata"]["name"] = name
    merge(doc, patch or {})
    return doc


BASE_SWEEP = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneSweep",
    "metadata": {"name": "sweep"},
    "spec": {
        "template": {"spec": copy.deepcopy(BASE_MANIFEST["spec"])},
        "searchSpace": [{"path": "hyperparameters.learningRate", "values": [1e-4, 2e-4]},
                        {"path": "method.lora.r", "values": [8, 16]}],
        "objective": {"dataset": "validation"},
        "parallelism": 2,
    },
}
"""The smallest valid FineTuneSweep: a 2 x 2 grid over BASE_MANIFEST's spec, ranked by validation loss."""


def sweep_manifest(patch: dict | None = None, name: str = "sweep") -> dict:
    """BASE_SWEEP named `name`, with `patch` deep-merged in (lists are replaced whole)."""
    doc = copy.deepcopy(BASE_SWEEP)
    doc["metadata"]["name"] = name
    merge(doc, patch or {})
    return doc


def cluster_env(script: Path, env: dict | None = None) -> dict[str, str]:
    """The `export K='V'` lines of `<script> env` (hack/cluster) as a dict, and a PATH that finds its kubectl."""
    out = subprocess.run([str(script), "env"], capture_output=True, text=True, check=True,
                         env=dict(os.environ, **(env or {}))).stdout
    parsed = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        parsed[key] = shlex.split(value.replace('"$PATH"', ""))[0] if value else ""
    parsed["PATH"] = f"{Path(parsed['KUBETUNE_KUBECTL']).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return parsed
