"""The arithmetic of training steps (``train.precision``).

Training steps run under autocast in bfloat16 where the hardware multiplies bf16 natively (a CUDA
GPU with bf16, a CPU with AVX512-BF16 or AMX): the matrix products take half the time or less and
the weights, the optimizer and the gradient sums stay float32. Everything whose numbers are kept
runs in float32 on every machine: diagnostics, the batch-norm statistics of the final model, priors
and all inference, so a model's outputs at test time do not depend on where it was trained, only
its weights do (as Kaldi's results depend on the GPU it trained on).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bf16 dot-product instructions (else oneDNN emulates them, slower than fp32)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_CPU_BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where ``device`` computes bf16 natively, else ``fp32``; others as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}' (use {', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision
    if device.type == "cuda":  # Ampere and later; torch's default would count emulation (V100, T4) too
        with torch.cuda.device(device):
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def legacy_precision(device: torch.device) -> str:
    """What training steps ran in before ``train.precision`` existed: bf16 on CUDA, fp32 elsewhere."""
    return "bf16" if device.type == "cuda" else "fp32"


def step_autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context a training step's forward pass runs in (``precision`` resolved)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
