"""Text generation from GGUF files with llama.cpp (through llama-cpp-python's C API), continuously
batched: every running sequence and every newly admitted prompt go into one `llama_batch` per step, each
token tagged with its sequence id, over one KV cache shared by all sequences (docs/architecture.md §3.15).

Why not `llama_cpp.Llama`: it decodes one sequence at a time. Why our own sampling (numpy, on the
logits llama.cpp returns): the same per-row semantics as the transformers engine (greedy below
MIN_TEMPERATURE, nucleus cut keeping the most likely token, per-request seeds, logprobs, a row whose
logits are not finite fails alone), at ~0.1 ms per row per token against ~10 ms for the forward pass.

Admission is by reservation: a request enters the running batch when its prompt plus `max_tokens` fits
in the KV cells no running request has reserved; otherwise it waits inside the engine (the batcher counts
it as running) until a row finishes. So `llama_decode` never runs out of cells mid-generation."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import llama_cpp
import numpy as np
from jinja2 import TemplateError
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from bitinglip.engines.batcher import Batcher, BatchKnobs, ContinuousBatcher, DynamicBatcher
from bitinglip.engines.constraint import Constraint, from_llama
from bitinglip.engines.protocol import Placement
from bitinglip.engines.rows import MAX_TEMPERATURE, MIN_LOGPROB, Row, check_context
from bitinglip.engines.types import GenerationFailed, TextRequest, TextResult, TokenLogprob
from bitinglip.errors import InvalidRequest
from bitinglip.structured.formats import Tool
from bitinglip.structured.tools import template_inputs, template_takes_tools

log = logging.getLogger(__name__)

PROMPT_CHUNK = 512  # tokens per llama_decode call while prefilling (llama.cpp's n_batch)
# KV cache storage: (ggml type, bytes per value). q8_0 is 32 values in 34 bytes; a quantized V cache
# needs flash attention, which is also what keeps batched decoding fast as sequences grow (§3.15).
KV_TYPES = {"f16": (llama_cpp.GGML_TYPE_F16, 2.0), "q8_0": (llama_cpp.GGML_TYPE_Q8_0, 34 / 32)}
HEAD_OF_LINE_S = 2.0  # how long a request that does not fit yet lets smaller ones pass it


def block_end(position: int) -> int:
    """The end of the prompt block holding `position`: blocks end at 16, 32, then every 64 tokens.
    A prompt is prefilled one block per `llama_decode` call, so a prompt's cells hold the same values
    whether it was prefilled whole or from a cached prefix (which always ends at a block end), and its
    last block is computed in the same shape (llama.cpp still rounds with cell placement: greedy text is
    best effort across cache states, as across batch shapes). 64-token blocks cost nothing measurable
    against one 512-token call; the small first ones let a short chat reuse its system prompt
    (docs/architecture.md §3.15)."""
    if position < 16:
        return 16
    if position < 32:
        return 32
    return (position // 64 + 1) * 64


def reusable_prefix(cached: list[int], prompt: list[int]) -> int:
    """How many leading tokens of `prompt` may come from the cached prefix: the longest common prefix,
    cut to a block end, leaving at least the prompt's last token to compute (its logits are needed)."""
    limit = min(len(cached), len(prompt) - 1)
    common = 0
    while common < limit and cached[common] == prompt[common]:
        common += 1
    end = 0
    while (following := block_end(end)) <= common:
        end = following
    return end


@llama_cpp.llama_log_callback
def _to_logging(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp prints every tensor it loads to stderr; its lines go to our log at DEBUG instead."""
    log.debug("llama.cpp: %s", text.decode(errors="replace").rstrip())


_initialised = False


def _init_backend() -> None:
    global _initialised
    if not _initialised:
        llama_cpp.llama_log_set(_to_logging, ctypes.c_void_p())
        llama_cpp.llama_backend_init()
        _initialised = True


@dataclass
class _Seq(Row):
    """A row with its llama.cpp sequence: its slot id, the next position, the token to feed next."""

    slot: int = -1
    position: int = 0
    pending: int = -1
    reserved: int = 0  # KV cells it may fill: prompt + max_tokens
    rng: np.random.Generator = field(default_factory=np.random.default_rng)


class LlamaEngine:
    task = "text"

    def __init__(self, name: str, model: Any, threads: int, kv_tokens: int, kv_type: str = "q8_0") -> None:
        self.name = name
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.threads = threads
        self.context_length = int(min(llama_cpp.llama_model_n_ctx_train(model), kv_tokens))
        self.kv_tokens = kv_tokens
        self.kv_type = kv_type
        self._pieces: dict[int, bytes] = {}
        self._end_tokens = np.array(
            [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)], dtype=np.intp
        )
        self._chat = self._chat_formatter()
        self._takes_tools = template_takes_tools(self._meta("tokenizer.chat_template"))
        self._vocabulary = from_llama(self.vocab, [int(t) for t in self._end_tokens], self.n_vocab)
        self._ctx: Any = None
        self._batch: Any = None
        self._slots = 0
        self._free: list[int] = []
        self._running: list[_Seq] = []
        self._waiting: list[TextRequest] = []  # admitted by the batcher, waiting for KV room here
        self._cache_seq = 0  # a sequence id no request uses: it holds the cached prompt prefix
        self._cached: list[int] = []  # the tokens whose cells it holds, positions 0..len-1
        self._cached_for: str | None = None  # the tenant whose prompt they are: only theirs reuse them
        self._paused: dict[int, _Seq] = {}  # rows set aside by `preempt`, by id of their request

    @classmethod
    def load(cls, name: str, path: Path, placement: Placement) -> LlamaEngine:
        _init_backend()
        gguf = path if path.is_file() else min(path.rglob("*.gguf"))
        params = llama_cpp.llama_model_default_params()
        if placement.device != "cpu":
            params.n_gpu_layers = -1  # all layers on the GPU llama.cpp was built for
        model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {gguf.name}")
        try:
            threads = placement.threads or os.cpu_count() or 1
            return cls(name, model, threads, placement.kv_tokens, placement.kv_type)
        except BaseException:
            llama_cpp.llama_model_free(model)
            raise

    # -- the Engine protocol

    def make_batcher(
        self, executor: Executor, knobs: BatchKnobs, on_batch: Callable[[int], None] | None
    ) -> Batcher[TextRequest, TextResult]:
        """The context (and its KV cache) is made here: its sequence slots are the batch size."""
        self._open_context(knobs.max_batch_size)
        if knobs.continuous:
            return ContinuousBatcher(
                self.name,
                self.step,
                self.reset,
                executor,
                knobs,
                on_batch,
                preempt=self.preempt,
                discard=self.discard,
                is_cancelled=lambda request: request.cancelled.is_set(),
            )
        return DynamicBatcher(self.name, self.run_batch, executor, knobs, on_batch, isolate=False)

    def memory_bytes(self) -> int:
        """Weights plus the KV cache (keys and values for every cell of every layer)."""
        model = self.model
        n_layer = llama_cpp.llama_model_n_layer(model)
        n_head_kv = llama_cpp.llama_model_n_head_kv(model)
        default_dim = llama_cpp.llama_model_n_embd(model) // max(llama_cpp.llama_model_n_head(model), 1)
        arch = self._meta("general.architecture") or ""
        key_dim = int(self._meta(f"{arch}.attention.key_length") or default_dim)  # set where it differs
        value_dim = int(self._meta(f"{arch}.attention.value_length") or default_dim)
        per_cell = n_layer * n_head_kv * (key_dim + value_dim) * KV_TYPES[self.kv_type][1]
        cache = int(per_cell * self.kv_tokens) if self._ctx is not None else 0
        return int(llama_cpp.llama_model_size(model)) + cache

    def unload(self) -> None:
        self._close_context()
        if self.model is not None:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def _open_context(self, slots: int) -> None:
        self._close_context()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.kv_tokens
        params.n_batch = PROMPT_CHUNK
        params.n_ubatch = PROMPT_CHUNK
        params.n_seq_max = slots + 1  # and one for the prompt-prefix cache
        params.kv_unified = True  # one pool of cells for all sequences: a long request may use most
        params.n_threads = params.n_threads_batch = self.threads
        params.type_k = params.type_v = KV_TYPES[self.kv_type][0]
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {self.name}")
        self._batch = llama_cpp.llama_batch_init(PROMPT_CHUNK + slots, 0, 1)
        self._slots = slots
        self._free = list(range(slots))
        self._cache_seq = slots
        self._cached = []

    def _close_context(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    # -- request preparation (the caller's thread)

    def _chat_formatter(self) -> Jinja2ChatFormatter | None:
        template = self._meta("tokenizer.chat_template")
        if not template:
            return None
        bos = self._token_text(llama_cpp.llama_vocab_bos(self.vocab))
        eos = self._token_text(llama_cpp.llama_vocab_eos(self.vocab))
        return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=True)

    @property
    def has_chat_template(self) -> bool:
        return self._chat is not None

    def _meta(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buffer, len(buffer))
        if n >= len(buffer):  # a longer value (a big chat template): n is its length
            buffer = ctypes.create_string_buffer(n + 1)
            n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buffer, len(buffer))
        return buffer.value.decode(errors="replace") if n >= 0 else None

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(llama_cpp.llama_vocab_get_text(self.vocab, token) or b"").decode(errors="replace")

    def encode(
        self, prompt: str | None, messages: list[dict[str, Any]] | None, tools: list[Tool] | None = None
    ) -> list[int]:
        if messages is not None:
            if not messages:
                raise InvalidRequest("messages must not be empty", param="messages")
            if self._chat is None:
                raise InvalidRequest(f"model {self.name!r} has no chat template; send a prompt", param="messages")
            turns, definitions = template_inputs(messages, tools, self._takes_tools)
            try:
                rendered = self._chat(messages=cast(Any, turns), tools=cast(Any, definitions))  # OpenAI-shaped dicts
            except (TemplateError, ValueError) as exc:  # the template's own checks (e.g. roles must alternate)
                raise InvalidRequest(
                    f"the model's chat template refused these messages: {exc}", param="messages"
                ) from exc
            # a template that writes the BOS token itself must not get a second one from the tokenizer
            return self._tokenize(rendered.prompt, add_special=not rendered.added_special)
        if prompt is None:
            raise InvalidRequest("either prompt or messages is required", param="prompt")
        return self._tokenize(prompt)

    def _tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Special tokens written in the text are parsed as such, as transformers' tokenizers do."""
        data = text.encode()
        size = len(data) + 8
        tokens = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, size, add_special, True)
        if n < 0:  # the buffer was too small: -n is what it needs
            size = -n
            tokens = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, size, add_special, True)
        if n < 0:
            raise InvalidRequest("the prompt could not be tokenized", param="prompt")
        return list(tokens[:n])

    def check_length(self, input_ids: list[int], max_tokens: int) -> None:
        check_context(input_ids, max_tokens, self.context_length)

    def constraint(self, grammar: str) -> Constraint:
        return self._vocabulary.compile(grammar)

    # -- decoding (the compute thread)

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            if n < 0:
                buffer = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            piece = self._pieces[token] = buffer.raw[:n]
        return piece

    def _decode_text(self, tokens: list[int]) -> str:
        return b"".join(self._piece(t) for t in tokens).decode(errors="replace")

    def _admit(self) -> tuple[list[_Seq], list[_Seq]]:
        """Waiting requests that fit, each in a free slot with its cells reserved, and the waiting ones
        cancelled meanwhile (ended without running). One that does not fit lets smaller ones behind it
        pass, until it has waited HEAD_OF_LINE_S: then nobody passes it and the batch drains for it.
        The cached prefix holds cells too; it is dropped when a request would fit without it."""
        admitted: list[_Seq] = []
        cancelled: list[_Seq] = []
        reserved = sum(row.reserved for row in self._running)
        now = time.perf_counter()
        for request in list(self._waiting):
            if request.cancelled.is_set():
                self._waiting.remove(request)
                stopped = self._resume(request) or _Seq(request)
                stopped.finish = "cancelled"
                cancelled.append(stopped)
                continue
            if not self._free:
                continue
            need = len(request.input_ids) + request.sampling.max_tokens
            shared = self._reusable(request, request.input_ids)  # cells it would share, not add
            if reserved + len(self._cached) + need - shared > self.kv_tokens >= reserved + need:
                self._drop_cache()
                shared = 0
            if (self._running or admitted) and reserved + len(self._cached) + need - shared > self.kv_tokens:
                if now - request.enqueued_at > HEAD_OF_LINE_S:
                    break
                continue
            self._waiting.remove(request)
            row = self._resume(request)
            if row is None:
                if self._seeded(request) and not self._running and not admitted:
                    self._start_empty()
                row = _Seq(request, rng=np.random.default_rng(request.sampling.seed))
            row.slot, row.reserved = self._free.pop(), need
            admitted.append(row)
            reserved += need
        return admitted, cancelled

    def discard(self, requests: list[TextRequest]) -> None:
        """Forget the set-aside rows of requests whose callers went away (the batcher's call)."""
        for request in requests:
            self._resume(request)

    def _resume(self, request: TextRequest) -> _Seq | None:
        """The row `preempt` set aside for this very request (ids of dead objects get reused)."""
        row = self._paused.get(id(request))
        if row is None or row.request is not request:
            return None
        del self._paused[id(request)]
        return row

    @staticmethod
    def _seeded(request: TextRequest) -> bool:
        return request.sampling.seed is not None and not request.sampling.greedy

    def _start_empty(self) -> None:
        """An idle engine starts a seeded request from an empty cache: the request then lands in the same
        cells every time, and the same seed gives the same text (llama.cpp's attention rounds with the
        placement of cells). The cached prefix is the price."""
        self._cached = []
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)

    def _prompt_work(self, row: _Seq) -> list[list[tuple[int, int, _Seq, bool]]]:
        """The row's prompt as blocks to decode, after the part the cached prefix gives it (its cells
        are shared into the row's sequence, not computed again). A resumed row (set aside by `preempt`)
        prefills its prompt and the tokens it had generated, less the last, which it feeds next."""
        resumed = bool(row.tokens)
        ids = row.request.input_ids + row.tokens[:-1] if resumed else row.request.input_ids
        start = self._reusable(row.request, ids)
        if not resumed:
            row.cached = start
        if start:
            llama_cpp.llama_memory_seq_cp(llama_cpp.llama_get_memory(self._ctx), self._cache_seq, row.slot, 0, start)
        row.position = len(ids)
        blocks = []
        while start < len(ids):
            end = min(block_end(start), len(ids))
            blocks.append([(ids[i], i, row, not resumed and i == len(ids) - 1) for i in range(start, end)])
            start = end
        return blocks

    def preempt(self, requests: list[TextRequest]) -> list[TextRequest]:
        """Set these requests aside for interactive ones (the batcher's call, between steps): their slots
        and cells are freed and their rows kept, so that when admitted again they resume where they were.
        Returns the ones set aside (all of those the engine holds)."""
        wanted = {id(r) for r in requests}
        set_aside = [r for r in self._waiting if id(r) in wanted]
        self._waiting = [r for r in self._waiting if id(r) not in wanted]
        memory = llama_cpp.llama_get_memory(self._ctx)
        for row in [row for row in self._running if id(row.request) in wanted]:
            llama_cpp.llama_memory_seq_rm(memory, row.slot, -1, -1)
            self._free.append(row.slot)
            self._paused[id(row.request)] = row
            set_aside.append(row.request)
        self._running = [row for row in self._running if id(row.request) not in wanted]
        return set_aside

    def _calls(
        self, running: list[tuple[int, int, _Seq, bool]], blocks: list[list[tuple[int, int, _Seq, bool]]]
    ) -> list[list[tuple[int, int, _Seq, bool]]]:
        """`llama_decode` calls for a step: the running rows' tokens, then prompt blocks, packed up to
        PROMPT_CHUNK tokens, never two blocks of one row in one call (see `block_end`)."""
        calls: list[list[tuple[int, int, _Seq, bool]]] = [list(running)]
        for block in blocks:
            current = calls[-1]
            row = block[0][2]
            if len(current) + len(block) > PROMPT_CHUNK or any(item[2] is row for item in current):
                calls.append([])
            calls[-1].extend(block)
        return [call for call in calls if call]

    def _reusable(self, request: TextRequest, ids: list[int]) -> int:
        """Cached prompt tokens `ids` may start from: none from another tenant's prompt, or its
        `cached_tokens` and its time to first token would confirm guesses about that prompt."""
        return reusable_prefix(self._cached, ids) if request.tenant == self._cached_for else 0

    def _keep_prefix(self, row: _Seq) -> None:
        """The finished row's prompt, cut to a block end, becomes the cached prefix (the latest wins:
        a chat's next turn and a system prompt shared by many requests both start with it)."""
        ids = row.request.input_ids
        end = 0
        while (following := block_end(end)) <= len(ids):
            end = following
        if end == 0 or (ids[:end] == self._cached and row.request.tenant == self._cached_for):
            return
        memory = llama_cpp.llama_get_memory(self._ctx)
        llama_cpp.llama_memory_seq_rm(memory, self._cache_seq, -1, -1)
        llama_cpp.llama_memory_seq_cp(memory, row.slot, self._cache_seq, 0, end)
        self._cached, self._cached_for = list(ids[:end]), row.request.tenant

    def _drop_cache(self) -> None:
        if self._cached:
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx), self._cache_seq, -1, -1)
            self._cached = []

    def step(self, admitted: list[TextRequest]) -> list[tuple[TextRequest, TextResult | GenerationFailed]]:
        """Continuous batching, one iteration: one token for every running row, the prompt of every
        newly admitted one (less its cached prefix), in as few `llama_decode` calls as blocks allow."""
        self._waiting.extend(admitted)
        fresh, cancelled = self._admit()
        running: list[tuple[int, int, _Seq, bool]] = [(row.pending, row.position, row, True) for row in self._running]
        for row in self._running:
            row.position += 1
        blocks = [block for row in fresh for block in self._prompt_work(row)]
        self._running += fresh
        try:
            for call in self._calls(running, blocks):
                self._decode(call)
        except Exception:
            self.reset()  # the cache's state is unknown now: its requests fail together
            raise
        done = [row for row in self._running if row.done]
        if done:
            memory = llama_cpp.llama_get_memory(self._ctx)
            for row in done:
                if row.error is None:
                    self._keep_prefix(row)
                llama_cpp.llama_memory_seq_rm(memory, row.slot, -1, -1)
                self._free.append(row.slot)
            self._running = [row for row in self._running if not row.done]
        size = len(self._running) + len(done)
        return [(row.request, row.result(size)) for row in done + cancelled]

    def _decode(self, work: list[tuple[int, int, _Seq, bool]]) -> None:
        batch = self._batch
        for i, (token, position, row, wants_logits) in enumerate(work):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = row.slot
            batch.logits[i] = wants_logits
        batch.n_tokens = len(work)
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status == 1 and self._cached:  # no room for the batch's cells: the cached prefix makes way
            self._drop_cache()
            status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} on {self.name}")
        for i, (_, _, row, wants_logits) in enumerate(work):
            if wants_logits and not row.done:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,))
                self._advance(row, logits)

    def _advance(self, row: _Seq, logits: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        """Sample and take the row's next token; anything this row alone hits fails this row alone."""
        try:
            if not np.isfinite(logits.max()):
                log.warning("non-finite logits for one row on %s; that request fails alone", self.name)
                row.error = GenerationFailed()
                return
            if row.request.sampling.holds_eos(len(row.tokens)):  # min_tokens / ignore_eos
                logits[self._end_tokens] = -np.inf
            if row.matcher is not None:  # response_format, tools: what the grammar allows next
                row.matcher.mask(logits)
            token = self._sample(logits, row)
            top = row.request.sampling.logprobs
            row.advance(
                token,
                eos=bool(llama_cpp.llama_vocab_is_eog(self.vocab, token)),
                decode=self._decode_text,
                logprob=None if top is None else self._logprob(token, logits, top),
            )
            row.pending = token
        except Exception:
            log.exception("one row failed on %s; that request fails alone", self.name)
            row.error = GenerationFailed()

    @staticmethod
    def _sample(logits: np.ndarray[Any, np.dtype[np.float32]], row: _Seq) -> int:
        """Greedy below MIN_TEMPERATURE; else softmax at the temperature, the nucleus cut (always
        keeping the most likely token), one draw from the row's own seeded generator. A distribution
        that over- or underflows takes the argmax, the limit it was tending to."""
        sampling = row.request.sampling
        best = int(np.argmax(logits))
        if sampling.greedy:
            return best
        scaled = (logits.astype(np.float64) - float(logits[best])) / min(sampling.temperature, MAX_TEMPERATURE)
        probs = np.exp(scaled)
        if sampling.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            sorted_probs = probs[order] / probs.sum()
            cut = np.cumsum(sorted_probs) - sorted_probs > sampling.top_p
            cut[0] = False
            probs[order[cut]] = 0.0
        total = probs.sum()
        if not np.isfinite(total) or total <= 0:
            return best
        return int(row.rng.choice(len(probs), p=probs / total))

    def _logprob(self, token: int, logits: np.ndarray[Any, np.dtype[np.float32]], top: int) -> TokenLogprob:
        shifted = logits.astype(np.float64) - float(logits.max())
        logp = np.maximum(shifted - np.log(np.exp(shifted).sum()), MIN_LOGPROB)
        alternatives: tuple[tuple[str, float], ...] = ()
        if top > 0:
            best = np.argpartition(-logp, top)[:top]
            best = best[np.argsort(-logp[best], kind="stable")]
            alternatives = tuple((self._decode_text([int(i)]), float(logp[i])) for i in best)
        return TokenLogprob(self._decode_text([token]), float(logp[token]), alternatives)

    def run_batch(self, requests: list[TextRequest]) -> list[TextResult | GenerationFailed]:
        """Static batching (batch flow runs): the batch runs until its last request finishes."""
        results: dict[int, TextResult | GenerationFailed] = {}
        admitted = list(requests)
        while len(results) < len(requests):
            for request, result in self.step(admitted):
                results[id(request)] = result
            admitted = []
        return [results[id(r)] for r in requests]

    def running_requests(self) -> list[TextRequest]:
        return [row.request for row in self._running] + list(self._waiting)

    def reset(self) -> None:
        """Forget every sequence and the cached prefix: the batcher fails their requests."""
        if self._ctx is not None:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        self._cached = []
        self._running = []
        self._waiting.clear()
        self._free = list(range(self._slots))


def load_llama(model_id: str, path: Path, placement: Placement) -> LlamaEngine:
    """The pool's loader for GGUF text models."""
    return LlamaEngine.load(model_id, path, placement)
