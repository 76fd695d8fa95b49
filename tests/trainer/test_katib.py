"""The trainer as a Katib trial (kubetune/trainer/katib.py, docs/katib.md#the-objective): with KATIB_TRIAL_NAME set
it pushes its metrics to Katib's db-manager, read back here with db-manager's own GetObservationLog; Katib
unreachable never fails the run; without grpcio a trial fails at once naming the extra.

The db-manager test runs Katib v0.19.0's real db-manager on PostgreSQL (`hack/katib.py db`: no cluster needed; it
builds the db-manager binary if missing, about 15 s with Go, and needs Debian's postgresql-15): it is marked
`cluster` so it runs with the heavier tests, and it fails (never skips) when those tools are missing."""
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api import contract
from kubetune.trainer import katib
from kubetune.trainer.errors import BadInput
from tests.trainer.conftest import chat_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def job_doc(tmp_path: Path, model: Path) -> dict:
    spec = {
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"train": write_jsonl(tmp_path / "data/train.jsonl", chat_rows(32, seed=1)),
                    "validation": write_jsonl(tmp_path / "data/val.jsonl", chat_rows(8, seed=2)),
                    "test": write_jsonl(tmp_path / "data/test.jsonl", chat_rows(8, seed=3)),
                    "maxSeqLength": 64},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 8, "batchSize": 8, "microBatchSize": 4, "learningRate": 3e-3,
                            "warmupRatio": 0.0},
        "evaluation": {"everySteps": 4},
        "output": {"uri": f"file://{tmp_path}/out/"},
        "resources": {"gpusPerNode": 0},
    }
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "trial"}, "spec": spec}


def fields(data: bytes) -> list[tuple[int, bytes]]:
    """(field number, payload) of a message's length-delimited fields (all that Katib's log messages have)."""
    out, at = [], 0
    while at < len(data):
        key, at = _varint(data, at)
        assert key & 7 == 2, f"wire type {key & 7}"
        size, at = _varint(data, at)
        out.append((key >> 3, data[at:at + size]))
        at += size
    return out


def _varint(data: bytes, at: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = data[at]
        n, shift, at = n | (byte & 0x7F) << shift, shift + 7, at + 1
        if not byte & 0x80:
            return n, at


def observation_log(address: str, trial: str) -> list[tuple[str, str, float]]:
    """db-manager's GetObservationLog for the trial: (time_stamp, metric name, value), in db-manager's order.
    GetObservationLogRequest{trial_name=1}; GetObservationLogReply{observation_log=1} (api.proto, v0.19.0)."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/api.v1.beta1.DBManager/GetObservationLog",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        reply = call(katib._field(1, trial), timeout=10)
    rows = []
    for _, log in fields(reply):
        for _, metric_log in fields(log):
            parts = dict(fields(metric_log))
            metric = dict(fields(parts[2]))
            rows.append((parts[1].decode(), metric[1].decode(), float(metric[2].decode())))
    return rows


def need_grpc() -> None:
    try:
        import grpc  # noqa: F401
    except ImportError:
        pytest.fail("grpcio is missing: pip install -e '.[operator,trainer,katib,dev]' (make test does)")


@pytest.fixture(scope="module")
def db_manager() -> str:
    """Katib's db-manager: `hack/katib.py db` (a no-op when `hack/katib.py up` runs it already); stopped after
    only if this started it."""
    need_grpc()
    state = Path(os.environ.get("KUBETUNE_CLUSTER_DIR") or ROOT / ".cluster")
    running = (state / "run/katib-db-manager.pid").exists()
    done = subprocess.run([sys.executable, str(ROOT / "hack/katib.py"), "db"], capture_output=True, text=True,
                          timeout=600)
    if done.returncode:
        pytest.fail(f"hack/katib.py db failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    yield done.stdout.strip().splitlines()[-1]
    if not running:
        subprocess.run([sys.executable, str(ROOT / "hack/katib.py"), "down"], check=True, timeout=120)


@pytest.mark.cluster
def test_the_trainer_reports_its_metrics_to_katibs_db_manager(db_manager, tmp_path, tiny_model):
    trial = f"ftj-test-{secrets.token_hex(4)}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBETUNE_", "KATIB_"))}
    pythonpath = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-m", "kubetune.trainer"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**clean, "PYTHONPATH": pythonpath,
                                            contract.SPEC_ENV: json.dumps(job_doc(tmp_path, tiny_model)),
                                            "KUBETUNE_TRAINER_TERMINATION_LOG": str(tmp_path / "term"),
                                            "KUBETUNE_TRAINER_CACHE_DIR": str(tmp_path / "cache"),
                                            "KUBETUNE_TRAINER_METRICS_PORT": "0",
                                            katib.TRIAL_ENV: trial, katib.ADDRESS_ENV: db_manager})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    summary = next(r for r in rows if r["kind"] == "summary")
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]

    log = observation_log(db_manager, trial)
    names = [name for _, name, _ in log]
    values = {name: value for _, name, value in log}
    # Each evaluation as it happened, in order, with its own time; then the final metrics.
    assert [v for _, name, v in log if name == "eval_loss"] == [r["loss"] for r in evals]
    assert {n for n in names if n.startswith("eval_")} == {f"eval_{k}" for k in evals[0] if k not in
                                                           ("kind", "time", "step")}
    assert values["loss"] == summary["eval"]["loss"]  # the objective: the shipped model's validation loss
    assert values["test_loss"] == summary["test"]["loss"]
    assert {n for n in names if n.startswith("test_")} == {f"test_{k}" for k in summary["test"]}
    assert {n for n in names if not n.startswith(("eval_", "test_"))} == set(summary["eval"])
    stamps = [t for t, name, _ in log if name == "eval_loss"]
    assert stamps[0] < stamps[1], stamps
    reported = next(json.loads(line) for line in done.stderr.splitlines() if '"kind": "katib"' in line)
    assert reported["reported"] == len(log) and reported["trial"] == trial


def test_an_unreachable_db_manager_does_not_fail_the_run(tmp_path, tiny_model, monkeypatch, capsys):
    need_grpc()
    from kubetune.trainer.__main__ import main

    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    for k, v in {contract.SPEC_ENV: json.dumps(job_doc(tmp_path, tiny_model)), katib.TRIAL_ENV: "ftj-unreachable",
                 katib.ADDRESS_ENV: address, "KUBETUNE_TRAINER_TERMINATION_LOG": str(tmp_path / "term"),
                 "KUBETUNE_TRAINER_CACHE_DIR": str(tmp_path / "cache"), "KUBETUNE_TRAINER_METRICS_PORT": "0"}.items():
        monkeypatch.setenv(k, v)
    katib.reporter.cache_clear()
    try:
        assert main() == contract.EXIT_OK
    finally:
        katib.reporter.cache_clear()
    err = capsys.readouterr().err
    assert json.loads((tmp_path / "term").read_text())["steps"] == 8
    warnings = [line for line in err.splitlines() if "Katib: could not report" in line]
    assert len(warnings) == 1, err  # once, though two evaluations could not be sent
    final = next(json.loads(line) for line in err.splitlines() if "Katib: the final report" in line)
    assert final["kind"] == "error" and address in final["message"] and "MetricsUnavailable" in final["message"]


def test_a_trial_without_grpcio_fails_at_once_naming_the_extra(monkeypatch):
    monkeypatch.setenv(katib.TRIAL_ENV, "ftj-x")
    monkeypatch.setitem(sys.modules, "grpc", None)  # import grpc raises ImportError
    katib.reporter.cache_clear()
    try:
        with pytest.raises(BadInput, match=r"kubetune\[trainer,katib\]"):
            katib.reporter()
    finally:
        katib.reporter.cache_clear()


def test_without_katib_trial_name_there_is_no_reporter(monkeypatch):
    monkeypatch.delenv(katib.TRIAL_ENV, raising=False)
    katib.reporter.cache_clear()
    assert katib.reporter() is None
