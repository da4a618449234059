"""What the model pool needs from an engine, so it serves every task the same way: the engine picks
its batching strategy, reports the memory it holds and lets go of it. A new backend (say llama.cpp for
GGUF files) plugs in as one more `EngineLoader` in the pool's table, with no special case there."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bitinglip.engines.batcher import Batcher, BatchKnobs

if TYPE_CHECKING:
    import torch

    from bitinglip.engines.constraint import Constraint
    from bitinglip.structured.formats import Tool

OnBatch = Callable[[int], None]  # told the size of each batch the batcher runs


@dataclass(frozen=True)
class Placement:
    """Where a model's weights go and what it may use there, resolved once from settings."""

    device: str
    dtype: torch.dtype
    device_map: str | None = None
    threads: int | None = None  # compute threads (None: the library's choice; llama.cpp: every core)
    kv_tokens: int = 16384  # llama.cpp: KV cache cells shared by a model's running requests
    kv_type: str = "q8_0"  # llama.cpp: how those cells store keys and values (f16 or q8_0)


@runtime_checkable
class Engine(Protocol):
    """A loaded model. Its work runs on the pool's one compute thread, through its batcher."""

    name: str  # the model id (NAME@REVISION) it serves

    def make_batcher(self, executor: Executor, knobs: BatchKnobs, on_batch: OnBatch | None) -> Batcher[Any, Any]:
        """A batcher feeding this engine on `executor`, with the loop strategy the engine supports."""
        ...

    def memory_bytes(self) -> int:
        """Bytes of the weights and buffers it holds (what unloading it gives back)."""
        ...

    def unload(self) -> None:
        """Drop the model so its memory can be reused; the engine serves nothing afterwards."""
        ...


@runtime_checkable
class TextGenerator(Engine, Protocol):
    """An engine serving text models: the pool tokenizes and checks the context before queueing."""

    @property
    def has_chat_template(self) -> bool:
        """Whether the model ships a chat template: a plain prompt is then sent as a user message."""
        ...

    def encode(
        self, prompt: str | None, messages: list[dict[str, Any]] | None, tools: list[Tool] | None = None
    ) -> list[int]:
        """The prompt's tokens: a raw prompt, or messages through the chat template with the tools
        the reply may call (bitinglip.structured.tools)."""
        ...

    def check_length(self, input_ids: list[int], max_tokens: int) -> None: ...

    def constraint(self, grammar: str) -> Constraint:
        """The grammar (bitinglip.structured.grammar) compiled against this model's vocabulary; the
        tokenizer's side is built on first use, so call it off the compute thread."""
        ...


EngineLoader = Callable[[str, Path, Placement], Engine]  # (model id, files, placement) -> engine
