"""Importing the trainer and its libraries prints nothing: no library warning leaks into a run's (or the demo's)
output."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_trainer_with_peft_prints_no_warning():
    code = "import kubetune.trainer.loop, peft, bitsandbytes"  # bitsandbytes' CPU backend warned here
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""
