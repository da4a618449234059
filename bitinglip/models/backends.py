"""Which inference backend serves an installed model, decided once, at install, from the fetched files:
a GGUF runs natively under llama.cpp (quantized, no conversion) when llama-cpp-python is installed;
everything else, or a GGUF when asked, is served by transformers (a GGUF converted to safetensors)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal, cast, get_args

from bitinglip.errors import InvalidRequest

Backend = Literal["transformers", "llama.cpp"]
RequestedBackend = Literal["auto", "transformers", "llama.cpp"]
REQUESTED_BACKENDS: tuple[str, ...] = get_args(RequestedBackend)
LLAMA_CPP_TASKS: frozenset[str] = frozenset({"text"})  # the pool's ("text", "llama.cpp") engine


def check_backend(value: str) -> RequestedBackend:
    """A request's backend, refused early when it names none we know (a flow run started by hand)."""
    if value not in REQUESTED_BACKENDS:
        raise InvalidRequest(f"backend must be one of {', '.join(REQUESTED_BACKENDS)}", param="backend")
    return cast(RequestedBackend, value)


def llama_cpp_available() -> bool:
    """Found without importing it: importing loads the native library, which only the engine needs."""
    return importlib.util.find_spec("llama_cpp") is not None


def find_gguf(folder: Path) -> Path | None:
    """The GGUF file a llama.cpp install keeps: the first by name, as the transformers conversion picks."""
    found = sorted(p for p in folder.rglob("*.gguf") if p.is_file())
    return found[0] if found else None


def choose_backend(requested: str, fetched: Path, task: str = "text") -> Backend:
    """`auto`: llama.cpp for a GGUF of a task it serves when it can run here, else transformers. An
    explicit `llama.cpp` that cannot be honoured is the caller's error (400), never a silent fall back."""
    requested = check_backend(requested)
    if requested == "transformers":
        return "transformers"
    has_gguf = find_gguf(fetched) is not None
    if requested == "llama.cpp":
        if task not in LLAMA_CPP_TASKS:
            raise InvalidRequest(f"backend llama.cpp serves text models, not {task} models", param="backend")
        if not has_gguf:
            raise InvalidRequest(
                "backend llama.cpp serves GGUF files, and this source has no .gguf file", param="backend"
            )
        if not llama_cpp_available():
            raise InvalidRequest(
                "backend llama.cpp needs the llama-cpp-python package, which is not installed here; "
                "use backend transformers or auto",
                param="backend",
            )
        return "llama.cpp"
    return "llama.cpp" if has_gguf and task in LLAMA_CPP_TASKS and llama_cpp_available() else "transformers"
