"""LoRA options and mergeAdapter, each shown by what it does to the trained adapter or the merged model on a tiny
random Llama: biases trained and saved (lora.bias), DoRA magnitude vectors (useDora), the alpha/sqrt(r) scale
(useRslora), and merged weights equal to base + scale x B @ A (mergeAdapter)."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubetune.api import FineTuneJob
from kubetune.trainer.loop import train
from tests.api.cases import _merge
from tests.trainer.conftest import chat_rows, finetunejob, settings, write_jsonl

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_job(tmp_path: Path, model: Path, **spec_patch) -> FineTuneJob:
    spec = {
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"train": write_jsonl(tmp_path / "data/train.jsonl", chat_rows(32, seed=1)),
                    "maxSeqLength": 64},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 6, "batchSize": 8, "microBatchSize": 8, "learningRate": 1e-2,
                            "warmupRatio": 0.0},
        "evaluation": {"baseline": False},
        "output": {"uri": f"file://{tmp_path}/out/"},
        "resources": {"gpusPerNode": 0},
    }
    _merge(spec, spec_patch)
    return finetunejob("tiny", spec)


@pytest.fixture(scope="session")
def tiny_model_with_biases(tiny_model, tmp_path_factory) -> Path:
    """The tiny Llama's tokenizer and shape, with a bias on every linear layer (Llama has none by default)."""
    from transformers import AutoConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama-bias")
    for path in tiny_model.iterdir():
        if "token" in path.name or path.name == "chat_template.jinja":
            shutil.copy(path, out / path.name)
    config = AutoConfig.from_pretrained(tiny_model)
    config.attention_bias = config.mlp_bias = True
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # non-zero biases, so a trained one is told from a reset one
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.02)
    model.save_pretrained(out)
    return out


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model/adapter_model.safetensors")


def base_weights(model: Path) -> dict[str, torch.Tensor]:
    return load_file(model / "model.safetensors")


def module_of(adapter_key: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (or `.base_layer.bias`, the bias of an
    adapted layer) → `model.layers.0.self_attn.q_proj`."""
    name = adapter_key.removeprefix("base_model.model.").replace(".base_layer.", ".")
    for part in (".lora_A.", ".lora_B.", ".lora_magnitude_vector"):
        name = name.split(part)[0]
    return name.removesuffix(".bias")


@pytest.mark.parametrize("bias, trained", [
    ("none", set()),
    ("all", set(LINEARS)),
    ("lora_only", {"q_proj", "v_proj"}),  # the biases of the adapted layers only
])
def test_lora_bias_trains_and_ships_the_chosen_biases(tmp_path, tiny_model_with_biases, bias, trained):
    job = make_job(tmp_path, tiny_model_with_biases,
                   method={"lora": {"bias": bias, "targetModules": ["q_proj", "v_proj"]}})
    train(job, "bias", settings(tmp_path))
    saved = {k: v for k, v in adapter(tmp_path / "out/bias").items() if k.endswith(".bias")}
    assert {module_of(k).rsplit(".", 1)[-1] for k in saved} == trained
    base = base_weights(tiny_model_with_biases)
    layers = {int(k.split("layers.")[1].split(".")[0]) for k in base if ".layers." in k}
    assert len(saved) == len(trained) * len(layers)
    for key, value in saved.items():  # each shipped bias moved away from the base model's
        assert not torch.allclose(value, base[f"{module_of(key)}.bias"]), key


def test_use_dora_ships_trained_magnitude_vectors(tmp_path, tiny_model):
    job = make_job(tmp_path, tiny_model, method={"lora": {"useDora": True}})
    train(job, "dora", settings(tmp_path))
    weights = adapter(tmp_path / "out/dora")
    magnitudes = {module_of(k): v for k, v in weights.items() if "lora_magnitude_vector" in k}
    adapted = {module_of(k) for k in weights if ".lora_A." in k}
    assert adapted and set(magnitudes) == adapted  # one per adapted layer
    assert json.loads((tmp_path / "out/dora/model/adapter_config.json").read_text())["use_dora"] is True
    base = base_weights(tiny_model)
    for module, magnitude in magnitudes.items():
        # DoRA starts each magnitude at the row norms of the base weight; training moved them.
        initial = base[f"{module}.weight"].norm(dim=1)
        assert magnitude.shape == initial.shape and not torch.allclose(magnitude, initial, atol=1e-6), module


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_adapter_ships_base_plus_scaled_delta(tmp_path, tiny_model, rslora):
    """The merged causal LM equals base + scale x B @ A per adapted layer, scale alpha/r, or alpha/sqrt(r) with
    useRslora, and predicts what the base model with the adapter predicts."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    r, alpha = 8, 16
    job = make_job(tmp_path, tiny_model, method={"lora": {"r": r, "alpha": alpha, "useRslora": rslora}},
                   output={"mergeAdapter": True})
    summary = train(job, "merge", settings(tmp_path))
    run = tmp_path / "out/merge"
    assert summary["artifacts"]["mergedUri"] == f"file://{run}/merged"
    assert not (run / "merged/adapter_config.json").exists()
    assert json.loads((run / "model/adapter_config.json").read_text())["use_rslora"] is rslora

    lora, base = adapter(run), base_weights(tiny_model)
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32)
    merged_state = merged.state_dict()
    scale = alpha / math.sqrt(r) if rslora else alpha / r
    adapted = sorted({module_of(k) for k in lora if ".lora_A." in k})
    assert len(adapted) == 7 * 2  # all-linear: every projection of both blocks
    for module in adapted:
        a = lora[f"base_model.model.{module}.lora_A.weight"]
        b = lora[f"base_model.model.{module}.lora_B.weight"]
        assert b.abs().max() > 0, module  # trained: B starts at zero
        expected = base[f"{module}.weight"] + scale * (b @ a)
        torch.testing.assert_close(merged_state[f"{module}.weight"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged_state["model.embed_tokens.weight"], base["model.embed_tokens.weight"])

    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                             run / "model").eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids).logits, with_adapter(ids).logits, rtol=1e-4, atol=1e-5)
