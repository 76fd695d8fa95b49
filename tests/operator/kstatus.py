"""kstatus as Flux's `wait: true`, kpt and cli-utils' applier read a resource: the real library
(sigs.k8s.io/cli-utils pkg/kstatus/status.Compute) through hack/kstatus, a small Go program built on first use (the
first build downloads its module and takes about a minute; later ones come from Go's build cache).

For a kind it has no rules for, such as FineTuneJob, the library reads, in this order: metadata.deletionTimestamp
(Terminating), status.observedGeneration != metadata.generation (InProgress), the first condition Reconciling=True
(InProgress) or Stalled=True (Failed), then the Ready condition (True: Current; False or Unknown: InProgress), and
otherwise Current.
"""
import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

HARNESS = Path(__file__).parents[2] / "hack" / "kstatus"
FINETUNEJOB = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob"}


@functools.cache
def binary() -> Path:
    go = shutil.which("go")
    assert go, "Go is needed to build the kstatus harness (the local cluster is built with it too)"
    out = Path(tempfile.mkdtemp(prefix="kstatus-")) / "kstatus"
    built = subprocess.run([go, "build", "-o", str(out), "."], cwd=HARNESS, capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, built.stderr
    return out


def compute_all(objs: list[dict]) -> list[tuple[str, str]]:
    """(status, message) of each object, as status.Compute returns them; an object without apiVersion and kind is
    read as a FineTuneJob."""
    lines = "\n".join(json.dumps({**FINETUNEJOB, **obj}) for obj in objs)
    out = subprocess.run([str(binary())], input=lines, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(objs) and not any(r.get("error") for r in results), results
    return [(r["status"], r["message"]) for r in results]


def compute(obj: dict) -> tuple[str, str]:
    return compute_all([obj])[0]
