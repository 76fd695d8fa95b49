"""Model FLOPs utilisation (MFU, as in the PaLM paper): the share of the accelerators' peak that training turns
into the model's matrix arithmetic. Reported only where the device's peak is known; attention-score FLOPs are left
out (small at fine-tuning sequence lengths), so the figure is slightly conservative."""
import torch

# Dense bf16 tensor-core peaks from NVIDIA's datasheets, matched against torch.cuda.get_device_name().
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def peak_flops(device_name: str) -> float | None:
    """The first entry whose name occurs in the device's name (more specific names come first)."""
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in device_name), None)


def flops_per_token(model: torch.nn.Module) -> float:
    """Matrix-multiply FLOPs of one training token: forward 2N, input gradients 2N, weight gradients 2N for the
    trained share of the N linear weights (LoRA and frozen layers skip most of the last)."""
    total = trained = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel()
            trained += module.weight.numel() if module.weight.requires_grad else 0
    return 4.0 * total + 2.0 * trained


def mfu(tokens_per_second: float, per_token: float, peak_per_device: float, devices: int) -> float:
    return tokens_per_second * per_token / (peak_per_device * devices)
