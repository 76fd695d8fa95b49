"""hack/bench/scale.py at a small N, as `make test` runs it: the bench works end to end and its invariants
hold (every job terminal, no duplicate Job, no orphan, a bounded number of API requests per job)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).parents[2]


def test_scale_bench_small(cluster, finetunejob_crd, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "hack" / "bench" / "scale.py"), "6", "--run-seconds", "3",
                           "--kill", "--timeout", "180", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "creation -> Job" in proc.stdout and "API requests per job" in proc.stdout
    assert "work queue wait, change line" in proc.stdout
    r = json.loads(out.read_text())
    assert (r["terminal"], r["succeeded"], r["duplicates"], r["orphans"]) == (6, 6, 0, 0)
    assert len(r["create_to_job"]) == 6 and r["killed_at_seconds"] is not None
    writes = sum(v for k, v in r["requests"].items() if not k.startswith(("watch ", "get ", "list ", "put leases")))
    assert writes / 6 < 20, r["requests"]  # kopf's annotations, the children, a few status writes, events


def test_scale_bench_progress(cluster, finetunejob_crd, tmp_path):
    """--serve-metrics: every kwok pod's trainer endpoint answers, and each running job's status follows its
    trainer's step at the operator's progress interval."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "hack" / "bench" / "scale.py"), "4", "--run-seconds", "8",
                           "--serve-metrics", "--progress-seconds", "1", "--step-seconds", "0.5", "--timeout", "180",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainer serves a step -> status shows it" in proc.stdout
    r = json.loads(out.read_text())
    assert (r["terminal"], r["succeeded"]) == (4, 4)
    assert r["scrapes"] >= 4 and len(r["progress_update_gaps"]) >= 4 * 3, r  # several steps per job reached status
    # Each new step shows within a few intervals (2 cores shared with the control plane: generous).
    assert max(r["progress_lag"]) < 5, sorted(r["progress_lag"])[-5:]
