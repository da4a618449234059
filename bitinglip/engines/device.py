"""Device and dtype choice from settings. Imported lazily: torch stays out of the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(setting: str) -> str:
    """`auto` = first visible CUDA device (CUDA_VISIBLE_DEVICES is honoured by torch) else CPU."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {setting!r} requested but CUDA is not available")
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """fp32 on CPU; bf16 on GPUs that support it, else fp16."""
    import torch

    if setting != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[setting]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
