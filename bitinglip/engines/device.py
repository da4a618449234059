"""Device and dtype choice from settings, and what engines hold there. Imported lazily: torch stays
out of the gateway."""

from __future__ import annotations

import gc
import itertools
import math
from collections.abc import Iterable
from pathlib import Path
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


# safetensors' dtype names: bytes per element, and whether a model loaded in another dtype casts it
_SAFETENSORS_DTYPES = {
    "F64": (8, True),
    "F32": (4, True),
    "F16": (2, True),
    "BF16": (2, True),
    "I64": (8, False),
    "I32": (4, False),
    "I16": (2, False),
    "I8": (1, False),
    "U8": (1, False),
    "BOOL": (1, False),
}


def weights_bytes(folder: Path, dtype: torch.dtype) -> int | None:
    """Bytes the safetensors weights under `folder` take once loaded in `dtype`, read from their headers
    (nothing is loaded): floating tensors are cast, the rest keep their type. Why: fp32 files loaded in
    bf16 on a GPU take half their size, and the memory budget must not refuse or evict for the files'
    size. None when there is nothing to read (no safetensors, or a type this does not know)."""
    from safetensors import safe_open

    files = sorted(folder.rglob("*.safetensors"))
    if not files:
        return None
    itemsize = dtype.itemsize
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                tensor = weights.get_slice(key)
                known = _SAFETENSORS_DTYPES.get(tensor.get_dtype())
                if known is None:
                    return None
                size, floating = known
                total += math.prod(tensor.get_shape()) * (itemsize if floating else size)
    return total


def release_memory(device: str) -> None:
    """After an engine dropped its model: collect it now, and hand cached CUDA blocks back to the
    driver so the next model (or another process) can use them."""
    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
