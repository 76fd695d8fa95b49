"""`kubetune run FILE`: the trainer on a laptop, on the tiny model with file:// URIs, as a user runs it."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from kubetune.api import contract
from tests.trainer.conftest import chat_rows, write_jsonl
from tests.trainer.test_train import make_job

ROOT = Path(__file__).parents[2]


def kubetune(*args: str, tty: bool = False) -> subprocess.CompletedProcess:
    # TTY_COMPATIBLE makes rich draw the progress bar as on a terminal, so the test sees what a user sees.
    env = dict(os.environ, COLUMNS="200", **({"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"} if tty else {}))
    return subprocess.run([sys.executable, "-m", "kubetune.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def manifest(tmp_path: Path, tiny_model: Path, **patch) -> Path:
    job = make_job(tmp_path, tiny_model, **patch).to_wire()
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, job]))
    return path


def test_run_trains_with_a_progress_bar_and_reports_baseline_against_fine_tuned(tmp_path, tiny_model):
    path = manifest(tmp_path, tiny_model,
                    dataset={"test": write_jsonl(tmp_path / "data/test.jsonl", chat_rows(16, seed=3))})
    result = kubetune("run", str(path), "--output-dir", str(tmp_path / "artifacts"), "--run-id", "r1",
                      "--threads", "1", "--cache-dir", str(tmp_path / "cache"), tty=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "artifacts/r1/summary.json").read_text())
    assert summary["steps"] == 12
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)  # colours and cursor moves
    assert f"run r1 → file://{tmp_path}/artifacts/r1/" in text
    assert "12/12" in text and "tok/s" in text  # the bar reached the end
    assert f"baseline (untouched model): validation loss {summary['baseline']['loss']:.4f}" in text
    validation_row, test_row = [line for line in text.splitlines() if "│ loss" in line]
    assert f"{summary['baseline']['loss']:.4f}" in validation_row and f"{summary['eval']['loss']:.4f}" in validation_row
    test, base = summary["test"], summary["comparison"]["baseModel"]
    difference = base["difference"]["loss"]
    assert f"{test['loss']:.4f} [{test['lossLow']:.4f}, {test['lossHigh']:.4f}]" in test_row
    assert f"{base['test']['loss']:.4f} → {difference['value']:+.4f} [{difference['low']:+.4f}, " in test_row
    assert f"artifacts: file://{tmp_path}/artifacts/r1/" in text
    assert '{"kind"' not in text  # the JSON log lines are the pod's; a person gets the bar

    # The same run id again: the finished run is reported, nothing is trained or rewritten.
    stamp = (tmp_path / "artifacts/r1/summary.json").stat().st_mtime_ns
    again = kubetune("run", str(path), "--output-dir", str(tmp_path / "artifacts"), "--run-id", "r1",
                     "--cache-dir", str(tmp_path / "cache"))
    assert again.returncode == 0 and f"{summary['eval']['loss']:.4f}" in again.stdout
    assert (tmp_path / "artifacts/r1/summary.json").stat().st_mtime_ns == stamp


def test_run_without_a_terminal_prints_a_line_per_logged_step(tmp_path, tiny_model):
    path = manifest(tmp_path, tiny_model)
    result = kubetune("run", str(path), "--output-dir", str(tmp_path / "artifacts"), "--run-id", "r1",
                      "--threads", "1", "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "artifacts/r1/metrics.jsonl").read_text().splitlines()]
    steps = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [int(line.split()[1].split("/")[0]) for line in steps] == [r["step"] for r in rows if r["kind"] == "train"]
    last = next(r for r in reversed(rows) if r["kind"] == "train")
    assert steps[-1].startswith(f"step 12/12  loss {last['loss']:.4f}  ")


def test_run_exit_codes_are_the_trainers(tmp_path, tiny_model):
    bad_data = manifest(tmp_path, tiny_model, dataset={"train": f"file://{tmp_path}/missing.jsonl"})
    result = kubetune("run", str(bad_data), "--output-dir", str(tmp_path / "a"), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == contract.EXIT_BAD_INPUT
    assert f"BadInput: dataset.train: file://{tmp_path}/missing.jsonl does not exist" in result.stderr
    assert "Traceback" not in result.stderr

    invalid = tmp_path / "invalid.yaml"
    doc = yaml.safe_load(bad_data.read_text().split("---")[-1])
    doc["spec"]["hyperparameters"]["epochs"] = 2
    invalid.write_text(yaml.safe_dump(doc))
    result = kubetune("run", str(invalid))
    assert result.returncode == contract.EXIT_BAD_INPUT
    assert f"{invalid}: spec.hyperparameters.epochs: set exactly one of epochs and maxSteps" in result.stderr


def test_the_cli_imports_without_torch():
    # The API and the validate/crd commands must work where the trainer's heavy dependencies are not installed.
    code = "import sys; sys.modules.update(torch=None, transformers=None, peft=None); import kubetune.cli"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
