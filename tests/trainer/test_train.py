"""End to end on a tiny model: data in, training, artifacts out, reload, early stopping, bad input."""
import json
from pathlib import Path

import pytest
import torch

from kubetune.api import FineTuneJob
from kubetune.trainer.errors import BadInput
from kubetune.trainer.loop import train
from tests.api.cases import _merge
from tests.trainer.conftest import chat_rows, finetunejob, settings, write_jsonl


def make_job(tmp_path: Path, model: Path, **spec_patch) -> FineTuneJob:
    spec = {
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"train": write_jsonl(tmp_path / "data/train.jsonl", chat_rows(64, seed=1)),
                    "validation": write_jsonl(tmp_path / "data/val.jsonl", chat_rows(16, seed=2)),
                    "maxSeqLength": 64},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 12, "batchSize": 8, "microBatchSize": 4, "learningRate": 3e-3,
                            "warmupRatio": 0.0},
        "evaluation": {"everySteps": 4, "baseline": True},
        "output": {"uri": f"file://{tmp_path}/out/"},
        "resources": {"gpusPerNode": 0},
    }
    _merge(spec, spec_patch)
    return finetunejob("tiny", spec)


def test_lora_end_to_end_lowers_loss_and_adapter_reloads(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    job = make_job(tmp_path, tiny_model)
    summary = train(job, "run-1", settings(tmp_path))
    run = tmp_path / "out/run-1"
    assert summary["stopReason"] == "MaxStepsReached" and summary["steps"] == 12
    assert summary["eval"]["loss"] < summary["baseline"]["loss"]
    for name in ("model/adapter_config.json", "model/adapter_model.safetensors", "model/tokenizer.json",
                 "metrics.jsonl", "finetunejob.json", "README.md", "summary.json"):
        assert (run / name).exists(), name
    assert json.loads((run / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 13))

    # The shipped adapter, loaded the standard way, scores exactly what the summary reports.
    from kubetune.trainer.loop import evaluate, load_data
    from kubetune.trainer.storage import Store
    from kubetune.trainer import data as d
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, run / "model")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(run / "model")
    _, val, _ = load_data(job, Store(job.spec.storage, tmp_path / "cache"), tok, d.Stats())
    again = evaluate(reloaded, val, 4, tok.pad_token_id, torch.device("cpu"), None)
    assert again["loss"] == pytest.approx(summary["eval"]["loss"], rel=1e-5)


def test_repeated_run_is_a_no_op_and_a_different_spec_is_refused(tmp_path, tiny_model):
    job = make_job(tmp_path, tiny_model, hyperparameters={"maxSteps": 2}, evaluation={"baseline": False})
    first = train(job, "run-1", settings(tmp_path))
    stamp = (tmp_path / "out/run-1/summary.json").stat().st_mtime_ns
    assert train(job, "run-1", settings(tmp_path)) == first
    assert (tmp_path / "out/run-1/summary.json").stat().st_mtime_ns == stamp
    other = make_job(tmp_path, tiny_model, hyperparameters={"maxSteps": 3})
    with pytest.raises(BadInput, match="already holds a finished run"):
        train(other, "run-1", settings(tmp_path))


def test_early_stopping_ships_the_best_step(tmp_path, tiny_model):
    # Validation answers contradict training answers: held-out loss rises once the model learns the rule.
    val = [{"messages": [{"role": "user", "content": r["messages"][0]["content"]},
                         {"role": "assistant", "content": "zzz qqq"}]} for r in chat_rows(16, seed=2)]
    job = make_job(tmp_path, tiny_model, hyperparameters={"maxSteps": 60},
                   dataset={"validation": write_jsonl(tmp_path / "data/bad-val.jsonl", val)},
                   evaluation={"everySteps": 2}, earlyStopping={"metric": "loss", "patience": 2})
    summary = train(job, "es", settings(tmp_path))
    assert summary["stopReason"] == "EarlyStopped"
    assert summary["steps"] < 60
    assert summary["shippedStep"] == summary["best"]["step"] < summary["steps"]
    evals = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "out/es/metrics.jsonl").read_text().splitlines())
             if r["kind"] == "eval"}
    assert summary["best"]["value"] == pytest.approx(min(evals.values()), abs=1e-5)
    assert summary["eval"]["loss"] == pytest.approx(summary["best"]["value"], rel=1e-4)


def test_full_fine_tuning_with_frozen_layers(tmp_path, tiny_model):
    job = make_job(tmp_path, tiny_model, method={"type": "full", "lora": None,
                                                 "freeze": {"embeddings": True, "trainableTopLayers": 1}},
                   hyperparameters={"maxSteps": 3, "learningRate": 1e-3})
    summary = train(job, "full", settings(tmp_path))
    from safetensors.torch import load_file
    trained = load_file(tmp_path / "out/full/model/model.safetensors")
    original = load_file(tiny_model / "model.safetensors")
    changed = {k for k in original if not torch.equal(original[k], trained[k])}
    assert changed and all(k.startswith("model.layers.1.") or k.startswith(("lm_head", "model.norm"))
                           for k in changed), changed
    assert summary["steps"] == 3


def test_throughput_counts_tokens_not_padding(tmp_path, tiny_model):
    """trainTokens (and so tokens/s in the log, the progress bar and the gauge) is the sum of the rows' real
    lengths: the padding a micro-batch adds to reach its longest row is not counted."""
    from transformers import AutoTokenizer

    from kubetune.trainer import data as d
    from kubetune.trainer.loop import load_data, rows_of_step
    from kubetune.trainer.storage import Store

    job = make_job(tmp_path, tiny_model, hyperparameters={"maxSteps": 3}, evaluation={"baseline": False})
    summary = train(job, "run-1", settings(tmp_path))
    tok = AutoTokenizer.from_pretrained(tmp_path / "out/run-1/model")
    train_rows, _, _ = load_data(job, Store(job.spec.storage, tmp_path / "cache"), tok, d.Stats())
    hp = job.spec.hyperparameters
    real = padded = 0
    for step in range(3):
        rows = [train_rows[i] for i in rows_of_step(step, hp.batch_size, len(train_rows), hp.seed)]
        lengths = [len(r["input_ids"]) for r in rows]
        real += sum(lengths)
        padded += sum(max(lengths[j: j + hp.micro_batch_size]) * len(lengths[j: j + hp.micro_batch_size])
                      for j in range(0, len(lengths), hp.micro_batch_size))
    assert real < padded  # the rows differ in length, so counting padding would show
    assert summary["trainTokens"] == real
