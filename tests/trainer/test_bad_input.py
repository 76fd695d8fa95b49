"""Bad input through the real entry point: each gives an error naming the thing (field, file, line), exit code 64
("do not retry") and a termination message that is valid JSON within the kubelet's 4 KB. Out of memory maps to 65.

Most cases call `main()` in-process (the same code as `python -m kubetune.trainer`, seconds faster); one runs
the module in a subprocess to check the process exit status and stderr as the kubelet sees them."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kubetune.api import contract
from kubetune.trainer.__main__ import main, termination_message
from tests.api.cases import _merge
from tests.trainer.conftest import chat_rows, write_jsonl
from tests.trainer.test_train import make_job

ROOT = Path(__file__).parents[2]


def env_for(tmp_path: Path, job_file: Path) -> dict[str, str]:
    return {contract.SPEC_FILE_ENV: str(job_file), contract.RUN_ID_ENV: "bad", "KUBETUNE_TRAINER_THREADS": "1",
            "KUBETUNE_TRAINER_CACHE_DIR": str(tmp_path / "cache"), "KUBETUNE_TRAINER_METRICS_PORT": "0",
            "KUBETUNE_TRAINER_TERMINATION_LOG": str(tmp_path / "term"), "KUBETUNE_TRAINER_LOG_EVERY_STEPS": "1"}


def write_job(tmp_path: Path, job) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job if isinstance(job, dict) else job.to_wire()))
    return path


def run_main(monkeypatch, tmp_path: Path, job) -> tuple[int, dict]:
    for k, v in env_for(tmp_path, write_job(tmp_path, job)).items():
        monkeypatch.setenv(k, v)
    code = main()
    raw = (tmp_path / "term").read_bytes()
    assert len(raw) <= contract.TERMINATION_MESSAGE_MAX_BYTES
    return code, json.loads(raw)


def lines(path: Path, *rows: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r + "\n" for r in rows))
    return f"file://{path}"


CHAT_OK = json.dumps(chat_rows(1)[0])
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)


def long_rows(n: int) -> list[dict]:
    """Short prompt, long answer: truncation keeps target tokens, so the example still trains."""
    return [{"messages": [{"role": "user", "content": "please say it"}, {"role": "assistant", "content": LONG}]}] * n


# Each case: a spec patch built in tmp_path, and what the error must say.
CASES = {
    "base model missing": (
        lambda t: {"baseModel": {"uri": f"file://{t}/no-such-model"}},
        r"baseModel\.uri: file://.*/no-such-model does not exist"),
    "base model not a model": (
        lambda t: {"baseModel": {"uri": lines(t / "junk/README.md", "not a model").removesuffix("/README.md")}},
        r"baseModel\.uri file://.*/junk: no config\.json there \(found: README\.md\)"),
    "train file missing": (
        lambda t: {"dataset": {"train": f"file://{t}/data/none.jsonl"}},
        r"dataset\.train: file://.*/data/none\.jsonl does not exist"),
    "jsonl line not JSON": (
        lambda t: {"dataset": {"train": lines(t / "bad.jsonl", CHAT_OK, CHAT_OK, '{"messages": [', CHAT_OK)}},
        r"file://.*/bad\.jsonl line 3: not valid JSON"),
    "jsonl line not an object": (
        lambda t: {"dataset": {"train": lines(t / "bad.jsonl", CHAT_OK, "[1, 2]")}},
        r"bad\.jsonl line 2: expected a JSON object, got list"),
    # Line 3-4 is one quoted field spanning two lines: the ragged row is reported at its real line, 5.
    "csv row with an extra field": (
        lambda t: {"dataset": {"train": lines(t / "bad.csv", "prompt,completion", "say hi,hi", '"two\nlines",ok',
                                              "a,b,c", "say yo,yo"), "schema": "prompt-completion"}},
        r"bad\.csv line 5: 3 fields, the header has 2 \(prompt, completion\)"),
    "csv row with a missing field": (
        lambda t: {"dataset": {"train": lines(t / "bad.csv", "prompt,completion", "say hi,hi", "lonely"),
                               "schema": "prompt-completion"}},
        r"bad\.csv line 3: 1 field, the header has 2"),
    "unknown role": (
        lambda t: {"dataset": {"train": lines(t / "bad.jsonl", CHAT_OK, json.dumps({"messages": [
            {"role": "bot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}))}},
        r"bad\.jsonl line 2: message 0 has unknown role 'bot'; allowed: system, user, assistant"),
    "schema mismatch": (
        lambda t: {"dataset": {"schema": "prompt-completion"}},
        r"train\.jsonl line 1: missing column 'prompt' \(columns: \['messages'\]\)"),
    "schema not detectable": (
        lambda t: {"dataset": {"train": lines(t / "qa.jsonl", json.dumps({"question": "q", "answer": "a"}))}},
        r"qa\.jsonl line 1: cannot detect the schema from the columns \['answer', 'question'\]"),
    "empty file": (
        lambda t: {"dataset": {"train": lines(t / "empty.jsonl")}},
        r"dataset\.train file://.*/empty\.jsonl: no records"),
    "empty after filtering": (
        lambda t: {"dataset": {"train": write_jsonl(t / "long.jsonl", long_rows(5)), "maxSeqLength": 16,
                               "longSequences": "drop"}},
        r"dataset\.train file://.*/long\.jsonl: no usable examples after filtering \(5 longer than maxSeqLength 16 with longSequences drop, 0 without"),
    "target modules not in the model": (
        lambda t: {"method": {"lora": {"targetModules": ["attn_qkv"]}}},
        r"method\.lora\.targetModules \['attn_qkv'\]: .*attn_qkv.* The model's linear layers are: .*q_proj"),
    "spec refused": (
        lambda t: {"hyperparameters": {"epochs": 2}},
        r"spec\.hyperparameters\.epochs: set exactly one of epochs and maxSteps"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_named_and_not_retried(monkeypatch, capsys, tmp_path, tiny_model, case):
    patch, expected = CASES[case]
    job = make_job(tmp_path, tiny_model).to_wire()
    _merge(job["spec"], patch(tmp_path))
    code, outcome = run_main(monkeypatch, tmp_path, job)
    assert code == contract.EXIT_BAD_INPUT
    assert outcome["error"]["reason"] == "BadInput"
    assert re.search(expected, outcome["error"]["message"]), outcome["error"]["message"]
    logged = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert logged["kind"] == "error" and re.search(expected, logged["message"])
    assert not (tmp_path / "out/bad/summary.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_qlora_on_a_cpu_is_refused(monkeypatch, tmp_path, tiny_model):
    # The spec is valid (one GPU asked for); the node just has none.
    job = make_job(tmp_path, tiny_model, method={"type": "qlora"}, resources={"gpusPerNode": 1})
    code, outcome = run_main(monkeypatch, tmp_path, job)
    assert code == contract.EXIT_BAD_INPUT
    assert "method.type qlora needs a CUDA GPU" in outcome["error"]["message"]


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_long_sequences_are_counted_in_the_log_and_summary(monkeypatch, capsys, tmp_path, tiny_model, policy):
    train = write_jsonl(tmp_path / "data/mixed.jsonl", chat_rows(30, seed=1) + long_rows(7) + chat_rows(20, seed=3))
    job = make_job(tmp_path, tiny_model, dataset={"train": train, "maxSeqLength": 32, "longSequences": policy},
                   hyperparameters={"maxSteps": 1}, evaluation={"baseline": False})
    code, outcome = run_main(monkeypatch, tmp_path, job)
    assert code == contract.EXIT_OK
    summary = json.loads((tmp_path / "out/bad/summary.json").read_text())
    data_log = next(json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"kind": "data"'))
    if policy == "truncate":
        assert (summary["data"]["truncated"], summary["data"]["droppedTooLong"], summary["data"]["trainRows"]) == (7, 0, 57)
        assert data_log["truncated"] == 7
    else:
        assert (summary["data"]["truncated"], summary["data"]["droppedTooLong"], summary["data"]["trainRows"]) == (0, 7, 50)
        assert data_log["dropped_too_long"] == 7
    assert outcome["data"] == summary["data"]  # the termination message carries the counts to the operator


def simulated_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated by the test)")


@pytest.mark.parametrize("where", ["baseline evaluation", "training step"])
def test_out_of_memory_exits_65_simulated(monkeypatch, tmp_path, tiny_model, where):
    """Simulated: no real allocation fails; the model's forward (causal_lm.model_output) raises torch.OutOfMemoryError."""
    from kubetune.trainer import causal_lm

    monkeypatch.setattr(causal_lm, "model_output", simulated_oom)
    job = make_job(tmp_path, tiny_model, evaluation={"baseline": where == "baseline evaluation"})
    code, outcome = run_main(monkeypatch, tmp_path, job)
    assert code == contract.EXIT_OUT_OF_MEMORY
    assert outcome["error"]["reason"] == "OOMKilled"
    assert "lower microBatchSize or maxSeqLength" in outcome["error"]["message"]
    if where == "training step":
        assert "out of memory at step 0" in outcome["error"]["message"]


def test_the_module_exits_64_with_a_json_error_line(tmp_path, tiny_model):
    job = make_job(tmp_path, tiny_model, dataset={"train": lines(tmp_path / "bad.jsonl", CHAT_OK, "{oops")})
    env = dict(os.environ, **env_for(tmp_path, write_job(tmp_path, job)))
    proc = subprocess.run([sys.executable, "-m", "kubetune.trainer"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == contract.EXIT_BAD_INPUT, proc.stderr[-2000:]
    logged = json.loads(proc.stderr.strip().splitlines()[-1])
    assert logged["reason"] == "BadInput" and "bad.jsonl line 2: not valid JSON" in logged["message"]
    assert "Traceback" not in proc.stderr  # an expected error is one line, not a stack trace
    assert json.loads((tmp_path / "term").read_text())["error"] == {"reason": "BadInput", "message": logged["message"]}


def test_termination_message_is_valid_json_within_4kb_whatever_the_outcome():
    big = {"runId": "r", "steps": 3, "eval": {f"m{i}": 0.5 for i in range(400)}, "best": {"x": "y" * 5000},
           "data": {"rows": list(range(2000))}}
    non_ascii = {"error": {"reason": "BadInput", "message": "train.jsonl line 9: unknown role '" + "é" * 3000 + "'"}}
    for outcome in (big, non_ascii, {"error": {"reason": "Error", "message": "x" * 100_000}}):
        text = termination_message(outcome)
        assert len(text.encode()) <= contract.TERMINATION_MESSAGE_MAX_BYTES
        parsed = json.loads(text)
        assert parsed.get("runId", "r") == "r"
    assert json.loads(termination_message(non_ascii))["error"]["message"].startswith("train.jsonl line 9: unknown role")
    small = {"runId": "r", "eval": {"loss": 1.0}}
    assert json.loads(termination_message(small)) == small  # nothing dropped when it fits
