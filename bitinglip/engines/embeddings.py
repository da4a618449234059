"""Sentence embeddings: mean pooling over the attention mask, L2-normalised (what
sentence-transformers does for all-MiniLM-L6-v2), with plain transformers.

A request whose vectors come out non-finite fails alone with `GenerationFailed` (JSON cannot carry NaN
and a NaN vector is no answer); a batch that raises is rerun request by request by the batcher."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from bitinglip.engines.batcher import Batcher, BatchKnobs, DynamicBatcher
from bitinglip.engines.device import module_bytes, release_memory
from bitinglip.engines.types import GenerationFailed
from bitinglip.outputs import Embeddings, EmbeddingTimings, PromptUsage

log = logging.getLogger(__name__)


@dataclass
class EmbeddingRequest:
    texts: list[str]
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int
    total_seconds: float
    batch_size: int

    def to_output(self) -> Embeddings:
        return Embeddings(
            data=self.vectors,
            usage=PromptUsage(prompt_tokens=self.prompt_tokens, total_tokens=self.prompt_tokens),
            timings=EmbeddingTimings(total_seconds=round(self.total_seconds, 5), batch_size=self.batch_size),
        )


class EmbeddingEngine:
    task = "embedding"

    def __init__(self, name: str, model: Any, tokenizer: Any, device: str, max_length: int) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length
        self.dimensions = int(model.config.hidden_size)

    @classmethod
    def load(cls, name: str, path: Path, device: str, dtype: torch.dtype, device_map: str | None) -> EmbeddingEngine:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=dtype, device_map=device_map)
        if device_map is None:
            model.to(device)
        model.eval()
        max_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
        return cls(name, model, tokenizer, device, max_length)

    def make_batcher(
        self, executor: Executor, knobs: BatchKnobs, on_batch: Callable[[int], None] | None
    ) -> Batcher[EmbeddingRequest, EmbeddingResult]:
        # A batch has no side effects, so one that raises is rerun request by request (`isolate`):
        # only the request that also fails alone fails. (Text batches are not: they have streamed.)
        return DynamicBatcher(self.name, self.run_batch, executor, knobs, on_batch, isolate=True)

    def memory_bytes(self) -> int:
        return module_bytes([self.model])

    def unload(self) -> None:
        self.model = None  # the tokenizer stays: it is small, and a batch still running may use it
        release_memory(self.device)

    @torch.inference_mode()
    def run_batch(self, requests: list[EmbeddingRequest]) -> list[EmbeddingResult | GenerationFailed]:
        """All texts of all requests in one forward (inputs longer than the model's window are cut)."""
        texts = [t for r in requests for t in r.texts]
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        normalized = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        finite = torch.isfinite(normalized).all(dim=1).cpu().tolist()  # one check for the whole batch
        vectors = normalized.cpu().tolist()
        tokens = encoded["attention_mask"].sum(dim=1).cpu().tolist()
        done = time.perf_counter()
        results: list[EmbeddingResult | GenerationFailed] = []
        start = 0
        for r in requests:
            end = start + len(r.texts)
            if not all(finite[start:end]):
                log.warning("non-finite embedding on %s; that request fails alone", self.name)
                results.append(GenerationFailed("embedding failed for this request"))
            else:
                results.append(
                    EmbeddingResult(vectors[start:end], int(sum(tokens[start:end])), done - r.enqueued_at, len(texts))
                )
            start = end
        return results
