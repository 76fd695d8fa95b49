"""A real sweep on this machine's real node (the README's "A real sweep"): SmolLM2-135M-Instruct on the chatterbot
splits of `make demo`, three learning rates, one trial at a time, ranked on the test loss with 95% intervals.

Run after `make deploy` (the operator installed, the real node up): `.venv/bin/python -m hack.demo_sweep`.
It stages the same model and data as `make demo` (written once per version, never overwritten), applies
examples/sweep-learning-rate.yaml sized for a CPU (each trial is `make demo`'s run at another learning rate),
prints a line whenever a trial moves, then the sweep's ranking as a table and the time it took.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import boto3
import yaml
from botocore.exceptions import ClientError

from hack import assets
from hack.demo import BUCKET, CPU_SIZING, NAMESPACE, SIZES, upload_once
from kubetune.testing import cluster_env
from kubetune.testing import merge as _merge

REPO = Path(__file__).resolve().parent.parent
NAME = "smollm2-lr"
LEARNING_RATES = [1.0e-4, 1.0e-3, 3.0e-3]


def stage(s3) -> tuple[str, dict[str, str]]:
    """The model and the chatterbot splits in MinIO, as `make demo` puts them: their URIs."""
    try:
        s3.create_bucket(Bucket=BUCKET)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    model = assets.smollm2_dir()
    model_prefix = f"models/{model.name}/"
    for path in sorted(model.iterdir()):
        upload_once(s3, path, model_prefix + path.name)
    data_prefix = f"datasets/chatterbot-{'-'.join(str(n) for n in SIZES.values())}/"
    work = Path(tempfile.mkdtemp(prefix="kubetune-sweep-"))
    splits = assets.write_chat_splits(assets.chatterbot_conversations(), work / "data", SIZES, seed=0)
    for path in splits.values():
        upload_once(s3, path, data_prefix + path.name)
    return (f"s3://{BUCKET}/{model_prefix}",
            {split: f"s3://{BUCKET}/{data_prefix}{path.name}" for split, path in splits.items()})


def sweep_manifest(model_uri: str, data: dict[str, str], s3_endpoint: str, region: str) -> dict:
    sweep = yaml.safe_load((REPO / "examples" / "sweep-learning-rate.yaml").read_text())
    sweep["metadata"] = {"name": NAME, "namespace": NAMESPACE}
    # One dimension and one trial at a time: the node has two cores, and the trials are ranked, not pruned.
    sweep["spec"].update(parallelism=1, searchSpace=[{"path": "hyperparameters.learningRate",
                                                      "values": LEARNING_RATES}])
    sweep["spec"].pop("pruning", None)
    spec = sweep["spec"]["template"]["spec"]
    _merge(spec, CPU_SIZING)
    _merge(spec, {"dataset": data, "baseModel": {"uri": model_uri},
                  "output": {"uri": f"s3://{BUCKET}/artifacts/{NAME}/"},
                  "storage": {"endpoint": s3_endpoint, "region": region}})
    return sweep


def trial_line(status: dict) -> str:
    counts = status.get("counts") or {}
    trials = ", ".join(f"{t['name'].removeprefix(NAME + '-')} {t['params'].get('hyperparameters.learningRate'):g}"
                       f" {t['phase']}" + (f" {t['objective']:.3f}" if t.get("objective") is not None else "")
                       for t in status.get("trials", []))
    return f"{status.get('phase', 'Pending'):9} done {counts.get('done', 0)}/{counts.get('total', '?')}  {trials}"


def ranking(status: dict) -> str:
    """The trials as a table, best first: test loss, its 95% interval, and whether the best is shown better."""
    from rich.console import Console
    from rich.table import Table

    table = Table("rank", "trial", "learning rate", "phase", "test loss", "95% interval", "vs best",
                  title=f"sweep {NAME}: objective test loss (lower is better)")
    best = (status.get("best") or {}).get("name")
    for t in sorted(status.get("trials", []), key=lambda t: (t.get("rank") or 99, t["number"])):
        interval = t.get("interval")
        vs = ("best" if t["name"] == best else "-" if t.get("indistinguishableFromBest") is None
              else "indistinguishable" if t["indistinguishableFromBest"] else "worse (intervals apart)")
        table.add_row(str(t.get("rank") or "-"), t["name"], f"{t['params']['hyperparameters.learningRate']:g}",
                      t["phase"], "-" if t.get("objective") is None else f"{t['objective']:.3f}",
                      f"[{interval['low']:.3f}, {interval['high']:.3f}]" if interval else "-", vs)
    console = Console(width=120, record=True)
    with console.capture():
        console.print(table)
    return console.export_text()


def main() -> int:
    env = cluster_env(REPO / "hack" / "cluster")
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    kubectl = lambda *a, **kw: subprocess_run(env, *a, **kw)  # noqa: E731
    model_uri, data = stage(s3)
    sweep = sweep_manifest(model_uri, data, env["KUBETUNE_CLUSTER_S3_ENDPOINT"], env["AWS_REGION"])
    manifest = Path(tempfile.mkdtemp(prefix="kubetune-sweep-")) / f"{NAME}.yaml"
    manifest.write_text(yaml.safe_dump(sweep, sort_keys=False))
    kubectl("delete", "finetunesweep", NAME, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
    print(f"$ kubectl apply -f {manifest}   # examples/sweep-learning-rate.yaml sized for a CPU", flush=True)
    print(kubectl("apply", "-f", manifest).stdout.strip(), flush=True)
    started, last = time.monotonic(), None
    while True:
        status = json.loads(kubectl("get", "finetunesweep", NAME, "-n", NAMESPACE, "-o", "json").stdout).get(
            "status") or {}
        line = trial_line(status)
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')}  {line}", flush=True)
            last = line
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(5)
    took = time.monotonic() - started
    print(kubectl("get", "finetunesweep", NAME, "-n", NAMESPACE).stdout, flush=True)
    print(ranking(status), flush=True)
    best = status.get("best") or {}
    print(f"best: {best.get('name')} ({best.get('comparison')}); indistinguishable from it: "
          f"{', '.join(best.get('indistinguishable') or []) or 'none'}")
    print(f"took {took / 60:.1f} min from kubectl apply to {status.get('phase')} ({len(LEARNING_RATES)} trials, "
          "one at a time)")
    return 0 if status.get("phase") == "Succeeded" else 1


def subprocess_run(env: dict, *args: str, **kw):
    import subprocess

    return subprocess.run([env["KUBETUNE_KUBECTL"], f"--kubeconfig={env['KUBECONFIG']}", *args], check=True,
                          capture_output=True, text=True, **kw)


if __name__ == "__main__":
    sys.exit(main())
