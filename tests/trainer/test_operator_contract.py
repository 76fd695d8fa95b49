"""The operator/trainer contract end to end without a container: the trainer runs from exactly the spec file
and environment the operator's Job gives it, and the operator's status function reads its termination message
into a Succeeded status whose artifacts exist."""
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from kubetune.api import FineTuneJob, contract
from kubetune.operator import children, runs
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.status import compute_status
from tests.trainer.test_train import make_job

ROOT = Path(__file__).parents[2]


def test_trainer_runs_from_the_operators_job_and_reports_back(tmp_path, tiny_model):
    doc = make_job(tmp_path, tiny_model, hyperparameters={"maxSteps": 6}).to_wire()
    doc["metadata"].update(namespace="team-a", uid="6d1c3a52-0000-4000-8000-000000000001", generation=2)
    job = FineTuneJob.model_validate(doc)
    run = runs.current_run(job)
    k8s_job = children.build_job(job, run, OperatorSettings())
    [config] = children.build_dependents(job, run, "job-uid", OperatorSettings())
    container = k8s_job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kubetune-train"]

    # The pod's filesystem, relocated under tmp_path: the mounted ConfigMap, the cache and termination log.
    spec_file = tmp_path / "etc-kubetune" / contract.SPEC_FILE_NAME
    spec_file.parent.mkdir()
    spec_file.write_text(config["data"][contract.SPEC_FILE_NAME])
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update({contract.SPEC_FILE_ENV: str(spec_file), "KUBETUNE_TRAINER_CACHE_DIR": str(tmp_path / "cache"),
                "KUBETUNE_TRAINER_METRICS_PORT": "0", "HOME": str(tmp_path),
                "KUBETUNE_TRAINER_TERMINATION_LOG": str(tmp_path / "termination-log"),
                "KUBETUNE_TRAINER_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-m", "kubetune.trainer"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)
    assert proc.returncode == contract.EXIT_OK, proc.stderr[-3000:]

    message = (tmp_path / "termination-log").read_text()
    assert len(message.encode()) <= contract.TERMINATION_MESSAGE_MAX_BYTES
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Succeeded", "startTime": "2026-11-22T10:00:00Z",
                                                 "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                                                     "exitCode": 0, "reason": "Completed", "message": message}}}]}}
    k8s_job["status"] = {"conditions": [{"type": "Complete", "status": "True"}],
                         "completionTime": "2026-11-22T10:05:00Z"}
    status, _ = compute_status(job, run, k8s_job, [pod], None, datetime.now(timezone.utc))
    summary = json.loads(message)
    assert status.phase == "Succeeded" and status.stop_reason == "MaxStepsReached"
    assert status.run_id == run.run_id == summary["runId"]
    assert status.progress.step == 6 and status.metrics.eval_loss == summary["eval"]["loss"]
    assert status.artifacts.uri == f"{job.spec.output.uri.rstrip('/')}/{run.run_id}"
    model_dir = Path(status.artifacts.model_uri.removeprefix("file://"))
    assert (model_dir / "adapter_config.json").exists()
    assert Path(status.artifacts.summary_uri.removeprefix("file://")).exists()
