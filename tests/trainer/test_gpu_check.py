"""hack/gpu-check's CPU-compatible parts (--cpu-smoke): every case of the GPU check runs for real on SmolLM2 with
tiny sizes (LoRA, full, and two gloo processes for DDP LoRA and FSDP2 full); its loss must fall, the shipped model
must reload and score what the summary says, and the multi-process runs must match one process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


def test_gpu_check_cpu_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "hack/gpu-check"), "--cpu-smoke", "--work", str(tmp_path),
                           "--json", str(tmp_path / "rows.json")], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["case"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    assert set(rows) == {"lora", "full", "ddp-lora", "fsdp-full"}
    assert (rows["ddp-lora"]["strategy"], rows["fsdp-full"]["strategy"]) == ("ddp", "fsdp")
    assert rows["fsdp-full"]["eval"] == pytest.approx(rows["full"]["eval"], rel=1e-3)
    assert rows["ddp-lora"]["eval"] == pytest.approx(rows["lora"]["eval"], rel=1e-3)
    assert "| ok |" in proc.stdout  # the table
