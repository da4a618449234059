"""Text generation engine: one model, a hand-rolled decode loop over a KV cache.

Why not `model.generate`: one `generate` call takes one sampling config, while a dynamic batch mixes
requests with different temperature/top_p/seed/stop/max_tokens, each streaming its own deltas and each
cancellable on its own. The loop below does per-row sampling, per-row stop and drops finished rows from
the cache so short requests do not pay for long ones.

One request must not fail its neighbours: sampling is numerically guarded per row (tiny temperatures
decode greedily, a row whose logits are not finite is dropped with `GenerationFailed`, a distribution that
over- or underflows falls back to argmax), anything a single row raises ends that row only, and a prefill
that raises is retried one request at a time so only the culprit fails.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer

from bitinglip.engines.batcher import Batcher, BatchKnobs, ContinuousBatcher, DynamicBatcher
from bitinglip.engines.constraint import Constraint, from_transformers
from bitinglip.engines.device import module_bytes, release_memory
from bitinglip.engines.rows import MAX_TEMPERATURE, MIN_LOGPROB, Row, check_context
from bitinglip.engines.types import (
    GenerationFailed,
    SamplingParams,
    TextRequest,
    TextResult,
    TokenLogprob,
)
from bitinglip.errors import InvalidRequest
from bitinglip.structured.formats import Tool
from bitinglip.structured.tools import template_inputs, template_takes_tools

log = logging.getLogger(__name__)


@dataclass
class _Row(Row):
    generator: torch.Generator | None = None


@dataclass
class _Running:
    """A batch in flight: its rows, KV cache, attention mask, positions and each row's next input."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor
    pending: torch.Tensor
    finished: list[_Row] = field(default_factory=list)

    def merge(self, other: _Running) -> _Running:
        """Join two batches: left-pad the shorter cache and mask to the same length, stack rows."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)], dim=0)
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)], dim=0)
        self.positions = torch.cat([self.positions, other.positions], dim=0)
        self.pending = torch.cat([self.pending, other.pending], dim=0)
        self.rows = self.rows + other.rows
        return self

    def select(self, keep: list[int]) -> None:
        """Keep only these rows (their indices), in the cache and every per-row tensor."""
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.pending = self.pending[index.to(self.pending.device)]
        self.rows = [self.rows[b] for b in keep]


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class TextEngine:
    task = "text"

    def __init__(self, name: str, model: Any, tokenizer: Any, device: str) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        # transformers renamed `past_key_values` to `cache` in 5.x; use whichever this version takes.
        self._running: _Running | None = None
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        template = getattr(tokenizer, "chat_template", None)
        self._takes_tools = template_takes_tools(template if isinstance(template, str) else None)
        logits = max(len(tokenizer), int(getattr(model.config, "vocab_size", 0) or 0))
        self._vocabulary = from_transformers(tokenizer, sorted(self.eos_ids), logits)
        self._decode_text = _text_decoder(tokenizer)

    @classmethod
    def load(cls, name: str, path: Path, device: str, dtype: torch.dtype, device_map: str | None) -> TextEngine:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map)
        if device_map is None:
            model.to(device)  # type: ignore[arg-type]
        model.eval()
        return cls(name, model, tokenizer, device)

    def make_batcher(
        self, executor: Executor, knobs: BatchKnobs, on_batch: Callable[[int], None] | None
    ) -> Batcher[TextRequest, TextResult]:
        """Continuous batching when asked for and the model's cache allows it, else static batches."""
        if knobs.continuous and self.supports_continuous:
            return ContinuousBatcher(
                self.name,
                self.step,
                self.reset,
                executor,
                knobs,
                on_batch,
                preempt=self.preempt,
                is_cancelled=lambda request: request.cancelled.is_set(),
            )
        # A text batch streams as it goes, so it is not rerun item by item when it fails (the engine
        # isolates a failing row itself); embedding and image batches are.
        return DynamicBatcher(self.name, self.run_batch, executor, knobs, on_batch, isolate=False)

    def memory_bytes(self) -> int:
        return module_bytes([self.model])

    @property
    def has_chat_template(self) -> bool:
        return getattr(self.tokenizer, "chat_template", None) is not None

    def unload(self) -> None:
        self._running = None
        self.model = None  # the tokenizer stays: it is small, and a batch still running may use it
        release_memory(self.device)

    # -- request preparation (cheap, runs on the caller's thread)

    def encode(
        self, prompt: str | None, messages: list[dict[str, Any]] | None, tools: list[Tool] | None = None
    ) -> list[int]:
        if messages is not None:
            if not messages:
                raise InvalidRequest("messages must not be empty", param="messages")
            if getattr(self.tokenizer, "chat_template", None) is None:
                raise InvalidRequest(f"model {self.name!r} has no chat template; send a prompt", param="messages")
            turns, definitions = template_inputs(messages, tools, self._takes_tools)
            try:
                ids = self.tokenizer.apply_chat_template(
                    turns, tools=definitions, add_generation_prompt=True, tokenize=True
                )
            except (TemplateError, ValueError) as exc:  # the template's own checks (e.g. roles must alternate)
                raise InvalidRequest(
                    f"the model's chat template refused these messages: {exc}", param="messages"
                ) from exc
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        if prompt is None:
            raise InvalidRequest("either prompt or messages is required", param="prompt")
        return list(self.tokenizer(prompt)["input_ids"])

    def check_length(self, input_ids: list[int], max_tokens: int) -> None:
        check_context(input_ids, max_tokens, self.context_length)

    def constraint(self, grammar: str) -> Constraint:
        return self._vocabulary.compile(grammar)

    # -- decoding

    def _prefill(self, requests: list[TextRequest]) -> _Running:
        """Left-padded forward over the new prompts; samples each one's first token."""
        rows = [_Row(r, generator=self._generator(r.sampling)) for r in requests]
        width = max(len(r.input_ids) for r in requests)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.input_ids) :] = torch.tensor(r.input_ids, dtype=torch.long)
            mask[i, width - len(r.input_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **{self._cache_kwarg: cache})
        running = _Running(rows, cache, mask, positions[:, -1:], torch.empty(0, dtype=torch.long))
        running.finished = self._advance_all(running, out.logits[:, -1, :].float())
        return running

    def _prefill_isolated(self, requests: list[TextRequest]) -> tuple[list[_Running], list[_Row]]:
        """Prefill the requests together; if that raises, one by one, so a request whose prefill
        fails ends alone (a failed row) and the others still start. A prefill builds its own cache,
        so a failure here never touches the running batch."""
        try:
            return [self._prefill(requests)], []
        except Exception:
            if len(requests) == 1:
                log.exception("prefill failed for one request on %s", self.name)
                return [], [_Row(requests[0], error=GenerationFailed())]
            log.warning("prefill of %d requests failed on %s; retrying one by one", len(requests), self.name)
        parts: list[_Running] = []
        failed: list[_Row] = []
        for request in requests:
            ok, bad = self._prefill_isolated([request])
            parts += ok
            failed += bad
        return parts, failed

    def _admit(self, requests: list[TextRequest], running: _Running | None) -> tuple[_Running | None, list[_Row]]:
        """Prefill `requests` and merge them into `running`; returns the batch and the rows that
        already ended (finished or failed at their first token)."""
        parts, done = self._prefill_isolated(requests)
        for fresh in parts:
            done.extend(fresh.finished)
            running = fresh if running is None else running.merge(fresh)
        return running, done

    def _decode(self, running: _Running) -> list[_Row]:
        """One token for every running row; returns the rows that finished."""
        ones = torch.ones((len(running.rows), 1), dtype=running.mask.dtype, device=running.mask.device)
        running.mask = torch.cat([running.mask, ones], dim=1)
        running.positions = running.positions + 1
        out = self.model(
            input_ids=running.pending.view(-1, 1).to(self.device),
            attention_mask=running.mask,
            position_ids=running.positions,
            **{self._cache_kwarg: running.cache},
        )
        return self._advance_all(running, out.logits[:, -1, :].float())

    def _advance_all(self, running: _Running, logits: torch.Tensor) -> list[_Row]:
        """Sample, append, stream; then drop finished and failed rows from the batch and its cache."""
        held = [b for b, row in enumerate(running.rows) if row.request.sampling.holds_eos(len(row.tokens))]
        if held and self.eos_ids:  # min_tokens / ignore_eos: the end is not in the distribution
            logits[torch.tensor(held)[:, None], torch.tensor(sorted(self.eos_ids))] = float("-inf")
        self._constrain(logits, running.rows)
        chosen, usable = self._sample(logits, running.rows)
        keep: list[int] = []
        finished: list[int] = []
        tokens: list[int] = chosen.tolist()  # one conversion, not one tensor index per row
        for b, row in enumerate(running.rows):
            if row.error is not None:
                pass  # its grammar failed (logged): it ends alone
            elif not usable[b]:
                log.warning("non-finite logits for one row on %s; that request fails alone", self.name)
                row.error = GenerationFailed()
            else:
                try:
                    self._advance(row, tokens[b], logits, b)
                except Exception:
                    log.exception("one row failed on %s; that request fails alone", self.name)
                    row.error = GenerationFailed()
            (finished if row.finish is not None or row.error is not None else keep).append(b)
        running.pending = chosen
        if finished:
            done = [running.rows[b] for b in finished]
            running.select(keep)
            return done
        return []

    def _constrain(self, logits: torch.Tensor, rows: list[_Row]) -> None:
        """Mask what each constrained row's grammar refuses (response_format, tools), in place."""
        for b, row in enumerate(rows):
            if row.matcher is None:
                continue
            try:
                refused = ~torch.from_numpy(row.matcher.allowed())
                logits[b, : refused.shape[0]].masked_fill_(refused.to(logits.device), float("-inf"))
            except Exception:
                log.exception("the grammar failed for one row on %s; that request fails alone", self.name)
                row.error = GenerationFailed()

    @torch.inference_mode()
    def run_batch(self, requests: list[TextRequest]) -> list[TextResult | GenerationFailed]:
        """Static batching: the batch runs until its last request finishes. A request that fails on
        its own gets its `GenerationFailed` in its slot; the others their results."""
        running, done = self._admit(requests, None)
        results: dict[int, TextResult | GenerationFailed] = {}
        while True:
            for row in done:
                results[id(row.request)] = row.result(len(requests))
            if running is None or not running.rows:
                break
            done = self._decode(running)
        return [results[id(r)] for r in requests]

    @property
    def supports_continuous(self) -> bool:
        """Continuous batching merges KV caches by left-padding: plain dynamic attention layers only."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        probe = DynamicCache(config=self.model.config)
        return all(type(layer) is DynamicLayer for layer in probe.layers)

    @torch.inference_mode()
    def step(self, admitted: list[TextRequest]) -> list[tuple[TextRequest, TextResult | GenerationFailed]]:
        """Continuous batching, one iteration: admit new requests into the running batch (prefill +
        cache merge), then decode one token for everyone. Returns the requests that ended: with their
        result, or with the `GenerationFailed` of a request that failed on its own."""
        done: list[_Row] = []
        try:
            if admitted:
                self._running, done = self._admit(admitted, self._running)
            if self._running is not None and self._running.rows:
                done.extend(self._decode(self._running))
        except Exception:
            self._running = None  # the batch's state is unknown now: its requests fail together
            raise
        size = len(self._running.rows) if self._running else 0
        if self._running is not None and not self._running.rows:
            self._running = None
        return [(row.request, row.result(size + len(done))) for row in done]

    def running_requests(self) -> list[TextRequest]:
        return [row.request for row in self._running.rows] if self._running else []

    @torch.inference_mode()
    def preempt(self, requests: list[TextRequest]) -> list[TextRequest]:
        """Set these requests aside for interactive ones (the batcher's call, between steps): their rows
        leave the batch and its cache, and start again from their prompt when admitted again (same
        seed, same text). A row that has streamed text stays, as a restart would send it twice, unless
        its sink takes a restart (`on_restart`: an async job's watched text)."""
        if self._running is None:
            return []
        wanted = {id(r) for r in requests}
        rows = self._running.rows
        out = [b for b, row in enumerate(rows) if id(row.request) in wanted and _restartable(row.request)]
        for b in out:
            if (restarted := rows[b].request.on_restart) is not None:
                restarted()
        if out:
            self._running.select([b for b in range(len(rows)) if b not in out])
            if not self._running.rows:
                self._running = None
        return [rows[b].request for b in out]

    def reset(self) -> None:
        self._running = None

    @staticmethod
    def _generator(sampling: SamplingParams) -> torch.Generator | None:
        if sampling.greedy or sampling.seed is None:
            return None
        return torch.Generator().manual_seed(sampling.seed)

    @staticmethod
    def _sample(logits: torch.Tensor, rows: list[_Row]) -> tuple[torch.Tensor, list[bool]]:
        """The next token of every row, and whether each row could be sampled at all.

        A row is unusable when its logits hold a NaN or +inf or are all -inf: the greedy pass's own
        `max` finds all three (NaN propagates), so the guard costs no extra pass over the vocabulary.
        Sampled rows are scaled, softmaxed and nucleus-cut together; a row whose distribution is still
        not finite or sums to 0 (overflow at a very small temperature, underflow) takes the argmax,
        the limit it was tending to. The per-row part is only the draw, which needs each row's own
        seeded generator."""
        top, chosen = logits.max(dim=-1)
        usable: list[bool] = torch.isfinite(top).tolist()
        chosen = chosen.cpu()
        sampled = [b for b, row in enumerate(rows) if usable[b] and not row.request.sampling.greedy]
        if not sampled:
            return chosen, usable
        params = [rows[b].request.sampling for b in sampled]
        temperature = torch.tensor([[min(p.temperature, MAX_TEMPERATURE)] for p in params])
        probs = torch.softmax(logits[torch.tensor(sampled, device=logits.device)].cpu() / temperature, dim=-1)
        nucleus = [j for j, p in enumerate(params) if p.top_p < 1.0]
        if nucleus:
            top_p = torch.tensor([[params[j].top_p] for j in nucleus])
            sorted_probs, order = probs[nucleus].sort(dim=-1, descending=True)
            cut = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest prefix reaching top_p
            cut[:, 0] = False  # and always the most likely token, whatever top_p is
            sorted_probs[cut] = 0.0
            probs[nucleus] = torch.zeros_like(sorted_probs).scatter(1, order, sorted_probs)
        drawable = (torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)).tolist()
        for j, b in enumerate(sampled):
            if not drawable[j]:
                continue
            try:
                chosen[b] = torch.multinomial(probs[j], 1, generator=rows[b].generator).item()
            except RuntimeError:  # not expected after the checks above; if it happens, it is this row's
                log.exception("sampling failed for one row")
                usable[b] = False
        return chosen, usable

    def _advance(self, row: _Row, token: int, logits: torch.Tensor, b: int) -> None:
        """Row `b` of the batch takes `token` (its logits row is read only for logprobs)."""
        top = row.request.sampling.logprobs
        row.advance(
            token,
            eos=token in self.eos_ids,
            decode=self._decode_text,
            logprob=None if top is None else self._logprob(token, logits[b], top),
        )

    def _logprob(self, token: int, logits: torch.Tensor, top: int) -> TokenLogprob:
        logp = torch.log_softmax(logits, dim=-1).clamp(min=MIN_LOGPROB)
        alternatives: tuple[tuple[str, float], ...] = ()
        if top > 0:
            values, indices = logp.topk(top)
            alternatives = tuple(
                (self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, indices, strict=True)
            )
        return TokenLogprob(self.tokenizer.decode([token]), float(logp[token]), alternatives)


def _text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """How a row's tokens become its text, every step for every row. A fast tokenizer that does no
    clean-up of spaces decodes straight through its `tokenizers` backend: the same text as
    `tokenizer.decode`, without the wrapper that first walks the list converting each id (a third of
    the per-row bookkeeping of a 64-row step, docs/architecture.md §3.24)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return lambda tokens: str(backend.decode(tokens, skip_special_tokens=True))
    return lambda tokens: str(tokenizer.decode(tokens, skip_special_tokens=True))


def _restartable(request: TextRequest) -> bool:
    """Whether a row may start again from its prompt: nothing streamed it, or its sink takes a restart."""
    return request.sink is None or request.on_restart is not None
