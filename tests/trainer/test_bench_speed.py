"""hack/bench/trainer_speed.py as `make bench-cpu` runs it, cut down to one tiny shape and a few steps: our trainer
, the plain-Trainer anchor and the Trainer with DataCollatorWithFlattening all run and the table has positive
numbers (tokens/s and each process's peak RSS) (no timing is asserted: a CPU shared with
other work says nothing about speed)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
ANCHOR = ROOT.parent / "shared" / "bench" / "hf_baseline.py"


def test_bench_cpu_prints_the_table(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "hack" / "bench" / "trainer_speed.py"), "cpu", "--steps", "4",
                           "--seq", "64", "--shapes", "tiny:lora:varlen", "--work", str(tmp_path / "work"),
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    (ours,) = result["ours"]
    assert ours["run"] == "ours" and ours["tokens_per_s"] > 0 and ours["step_s"] > 0 and ours["peak_rss_gb"] > 0
    assert "| tiny:lora:varlen | ours |" in proc.stdout
    if ANCHOR.exists():  # ../shared sits beside every checkout and CI's clone; without it the anchors are skipped
        plain, flat = sorted(result["anchors"], key=lambda r: bool(r.get("flatten")))
        assert plain["tokens_per_s"] > 0 and not plain["liger"] and not plain["compile"] and not plain.get("flatten")
        assert flat["flatten"] and flat["tokens_per_s"] > 0 and flat["peak_rss_gb"] > 0
        row = next(line for line in proc.stdout.splitlines() if line.startswith("| tiny:lora:varlen | ours |"))
        cells = [c.strip() for c in row.split("|")]
        for ratio in cells[7:12]:  # ÷ plain, ÷ flatten, each repeat, per CPU-second, RSS ÷ plain
            assert ratio.endswith("×") and float(ratio[:-1]) > 0, row
    else:
        assert "anchors skipped" in proc.stderr
