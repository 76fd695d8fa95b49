"""MFU's parts: the device's peak by name, the model's FLOPs per token, and the ratio."""
import pytest
import torch

from kubetune.trainer import flops


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),  # the PCIe card is slower than the SXM one of the same name
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L40S", 362e12),       # not taken for an L4
    ("NVIDIA L4", 121e12),
    ("NVIDIA GeForce RTX 3060", None),
])
def test_peak_by_device_name(name, peak):
    assert flops.peak_flops(name) == peak


def test_flops_per_token_counts_weight_gradients_only_for_trained_layers():
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5))
    assert flops.flops_per_token(model) == 6 * (200 + 100)  # everything trained: the classic 6N (biases aside)
    model[0].weight.requires_grad_(False)
    assert flops.flops_per_token(model) == 4 * 300 + 2 * 100


def test_lora_costs_about_4n(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    full = flops.flops_per_token(base)
    lora = flops.flops_per_token(get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])))
    assert 4 / 6 * full < lora < 0.75 * full


def test_mfu_is_achieved_over_peak():
    # 1,000 tokens/s at 1 GFLOP each on two devices of 1 TFLOP/s peak: half the peak.
    assert flops.mfu(1000, 1e9, 1e12, 2) == pytest.approx(0.5)
