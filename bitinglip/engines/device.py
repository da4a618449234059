"""Device and dtype choice from settings, and what engines hold there. Imported lazily: torch stays
out of the gateway."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

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


def module_bytes(modules: Iterable[Any]) -> int:
    """Bytes of the parameters and buffers of the torch modules among `modules` (others count 0)."""
    import torch

    total = 0
    for module in modules:
        if isinstance(module, torch.nn.Module):
            tensors = itertools.chain(module.parameters(), module.buffers())
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def release_memory(device: str) -> None:
    """After an engine dropped its model: collect it now, and hand cached CUDA blocks back to the
    driver so the next model (or another process) can use them."""
    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
