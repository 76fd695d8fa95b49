"""A real sweep on this machine's real node (the README's "A real sweep"): SmolLM2-135M-Instruct on the chatterbot
splits of `make demo`, three learning rates, one trial at a time, ranked on the test loss with 95% intervals.

Run after `make deploy` (the operator installed, the real node up): `.venv/bin/python -m hack.demo_sweep`.
It stages the same model and data as `make demo` (written once per version, never overwritten), applies
examples/sweep-learning-rate.yaml sized for a CPU (each trial is `make demo`'s run at another learning rate),
prints a line whenever a trial moves, then the sweep's ranking as a table and the time it took.
"""
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hack.demo import BUCKET, CPU_SIZING, NAMESPACE, clients, number, stage, table, watch
from kubetune.testing import merge as _merge

REPO = Path(__file__).resolve().parent.parent
NAME = "smollm2-lr"
LEARNING_RATES = [1.0e-4, 1.0e-3, 3.0e-3]


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
    best = (status.get("best") or {}).get("name")
    rows = []
    for t in sorted(status.get("trials", []), key=lambda t: (t.get("rank") or 99, t["number"])):
        interval = t.get("interval") or {}
        vs = ("best" if t["name"] == best else None if t.get("indistinguishableFromBest") is None
              else "indistinguishable" if t["indistinguishableFromBest"] else "worse (intervals apart)")
        rows.append([t.get("rank"), t["name"], f"{t['params']['hyperparameters.learningRate']:g}", t["phase"],
                     number(t.get("objective")),
                     f"[{interval['low']:.3f}, {interval['high']:.3f}]" if interval else None, vs])
    return table(["RANK", "TRIAL", "LEARNING RATE", "PHASE", "TEST LOSS", "95% INTERVAL", "VS BEST"], rows)


def main() -> int:
    env, s3, kubectl = clients()
    _, model_uri, _, data = stage(s3, Path(tempfile.mkdtemp(prefix="kubetune-sweep-")))
    sweep = sweep_manifest(model_uri, data, env["KUBETUNE_CLUSTER_S3_ENDPOINT"], env["AWS_REGION"])
    manifest = Path(tempfile.mkdtemp(prefix="kubetune-sweep-")) / f"{NAME}.yaml"
    manifest.write_text(yaml.safe_dump(sweep, sort_keys=False))
    kubectl("delete", "finetunesweep", NAME, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
    print(f"$ kubectl apply -f {manifest}   # examples/sweep-learning-rate.yaml sized for a CPU", flush=True)
    print(kubectl("apply", "-f", manifest).stdout.strip(), flush=True)
    started = time.monotonic()
    status = watch(kubectl, "finetunesweep", NAME, trial_line, every_seconds=5)
    took = time.monotonic() - started
    print(kubectl("get", "finetunesweep", NAME, "-n", NAMESPACE).stdout, flush=True)
    print(ranking(status), flush=True)
    best = status.get("best") or {}
    print(f"best: {best.get('name')} ({best.get('comparison')}); indistinguishable from it: "
          f"{', '.join(best.get('indistinguishable') or []) or 'none'}")
    print(f"took {took / 60:.1f} min from kubectl apply to {status.get('phase')} ({len(LEARNING_RATES)} trials, "
          "one at a time)")
    return 0 if status.get("phase") == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
