"""A run killed mid-way (SIGTERM as on preemption, SIGKILL as on a node loss) resumes from its newest complete
checkpoint and ends exactly as an uninterrupted run: same step count, same per-step losses (so the same data
in the same order, neither replayed nor skipped), same final evaluation."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api import contract
from tests.trainer.test_train import make_job

ROOT = Path(__file__).parents[2]


def trainer(work: Path, job_file: Path, run_id: str) -> subprocess.Popen:
    env = dict(os.environ, KUBETUNE_SPEC_FILE=str(job_file), KUBETUNE_RUN_ID=run_id,
               KUBETUNE_TRAINER_CACHE_DIR=str(work / "cache"), KUBETUNE_TRAINER_METRICS_PORT="0",
               KUBETUNE_TRAINER_TERMINATION_LOG=str(work / f"{run_id}.term"),
               KUBETUNE_TRAINER_LOG_EVERY_STEPS="1", KUBETUNE_TRAINER_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "kubetune.trainer"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_until_step(proc: subprocess.Popen, step: int) -> None:
    for line in proc.stdout:
        if line.startswith("{") and json.loads(line).get("kind") == "train" and json.loads(line)["step"] >= step:
            return
    raise AssertionError(f"trainer ended before step {step}: {proc.wait()} {proc.stderr.read()[-2000:]}")


def losses(work: Path, run_id: str) -> dict[int, float]:
    rows = [json.loads(x) for x in (work / "out" / run_id / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == sorted({r["step"] for r in train}), "a step was logged twice"
    return {r["step"]: r["loss"] for r in train}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def job_file(work, tiny_model) -> Path:
    # LoRA dropout makes every step consume RNG: a resume that did not restore the RNG state would diverge.
    job = make_job(work, tiny_model, hyperparameters={"maxSteps": 40}, checkpoint={"everySteps": 5},
                   method={"lora": {"dropout": 0.1}}, evaluation={"everySteps": 10, "baseline": False})
    path = work / "job.json"
    path.write_text(json.dumps(job.to_wire()))
    return path


@pytest.fixture(scope="module")
def reference(work, job_file) -> dict:
    """One uninterrupted run, shared by both kill tests."""
    proc = trainer(work, job_file, "reference")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads((work / "out/reference/summary.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_run_resumes_and_matches_an_uninterrupted_one(work, job_file, reference, sig):
    run_id = f"killed-{sig.name.lower()}"
    proc = trainer(work, job_file, run_id)
    run_until_step(proc, 13)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == contract.EXIT_RETRY
        assert json.loads((work / f"{run_id}.term").read_text())["error"]["reason"] == "Preempted"
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (work / "out" / run_id / "summary.json").exists()
    checkpoints = sorted(p.name for p in (work / "out" / run_id / "checkpoints").iterdir())
    assert checkpoints and len(checkpoints) <= 2  # checkpoint.keep
    newest = int(checkpoints[-1].removeprefix("step-"))
    # SIGTERM writes a checkpoint at the step it arrived (>= 13); SIGKILL leaves the last scheduled one.
    assert 13 <= newest < 40 if sig == signal.SIGTERM else (10 <= newest < 40 and newest % 5 == 0)

    resumed = trainer(work, job_file, run_id)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    resumes = [json.loads(x) for x in out.splitlines() if x.startswith('{"kind": "resume"')]
    assert [r["step"] for r in resumes] == [newest]
    summary = json.loads((work / "out" / run_id / "summary.json").read_text())
    assert summary["steps"] == reference["steps"] == 40
    assert summary["trainTokens"] == reference["trainTokens"]
    assert losses(work, run_id) == pytest.approx(losses(work, "reference"), rel=1e-6)
    assert summary["eval"]["loss"] == pytest.approx(reference["eval"]["loss"], rel=1e-6)


def test_a_rerun_resumes_the_failed_run_from_its_checkpoint(work, job_file, reference):
    """A rerun (spec.rerunToken, issue 25) is the same run: the trainer started with the token in its spec resumes
    from the checkpoint the failed attempt left, and records the run's spec hash as without the token."""
    run_id = "rerun"
    proc = trainer(work, job_file, run_id)
    run_until_step(proc, 13)
    proc.send_signal(signal.SIGKILL)  # the attempt that failed (its retries spent)
    proc.communicate(timeout=120)
    newest = max(int(p.name.removeprefix("step-")) for p in (work / "out" / run_id / "checkpoints").iterdir())
    spec = json.loads(job_file.read_text())
    rerun_file = work / "rerun.json"
    rerun_file.write_text(json.dumps({**spec, "spec": {**spec["spec"], "rerunToken": "r1"}}))
    resumed = trainer(work, rerun_file, run_id)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert [json.loads(x)["step"] for x in out.splitlines() if x.startswith('{"kind": "resume"')] == [newest]
    summary = json.loads((work / "out" / run_id / "summary.json").read_text())
    assert summary["steps"] == reference["steps"] and summary["specHash"] == reference["specHash"]
    assert losses(work, run_id) == pytest.approx(losses(work, "reference"), rel=1e-6)
