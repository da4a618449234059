"""Grammar-constrained decoding inside the continuous batcher, per row (docs/architecture.md §3.18):
before each sample a row's logits lose every token its grammar cannot take next; the sampled token
then advances the row's matcher. Both text engines share it; each gives its tokenizer once.

State lives on the row (`Row.matcher`), so it follows the row: a llama.cpp row set aside and resumed
keeps its matcher where it was (its tokens are re-prefilled, not re-sampled); a transformers row that
restarts from its prompt is a new row with a fresh matcher. Matchers run on the compute thread only."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from llguidance import LLMatcher, LLTokenizer

from bitinglip.errors import InvalidRequest
from bitinglip.structured.grammar import limits


class Vocabulary:
    """An engine's tokenizer as llguidance sees it, built on first use (about a second for a 50k
    vocabulary, off the compute thread) and kept for the engine's life; `logits` is the width of the
    model's logits, which may exceed the tokenizer's vocabulary (padding rows are never allowed)."""

    def __init__(self, build: Callable[[], LLTokenizer], logits: int) -> None:
        self._build = build
        self._tokenizer: LLTokenizer | None = None
        self._lock = threading.Lock()
        self.logits = logits

    @property
    def tokenizer(self) -> LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                try:
                    self._tokenizer = self._build()
                except ValueError as exc:  # a tokenizer llguidance cannot read (a slow Hugging Face one)
                    raise InvalidRequest(
                        f"this model cannot constrain its replies (response_format, tools): {exc}",
                        param="response_format",
                    ) from exc
            return self._tokenizer

    def compile(self, grammar: str) -> Constraint:
        """The grammar against this vocabulary (under a millisecond: llguidance builds its lexer lazily,
        within `limits()`); what it refuses is the caller's 400."""
        matcher = LLMatcher(self.tokenizer, grammar, limits=limits(), log_level=0)
        if matcher.is_error():
            message = " ".join(matcher.get_error().split())[:500]
            raise InvalidRequest(f"the requested format cannot be generated: {message}", param="response_format")
        return Constraint(matcher, self.tokenizer.vocab_size, self.logits)


class Constraint:
    """A compiled grammar, in its start state; each row that follows it starts its own copy."""

    def __init__(self, start: LLMatcher, vocab_size: int, logits: int) -> None:
        self._start = start
        self._vocab_size = vocab_size
        self._logits = logits

    def matcher(self) -> RowMatcher:
        return RowMatcher(self._start.deep_copy(), self._vocab_size, self._logits)


class RowMatcher:
    """One row's place in its grammar."""

    def __init__(self, matcher: LLMatcher, vocab_size: int, logits: int) -> None:
        self._matcher = matcher
        self._logits = logits
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)  # one bit per token

    def allowed(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which tokens may come next, one flag per logit. Raises when none may (the matcher failed,
        say a step ran out of its limits): the engines fail that row alone."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if self._matcher.is_error() or not self._bits.any():
            raise RuntimeError(f"the grammar allows no next token: {self.error or 'none left'}")
        flags = np.unpackbits(self._bits.view(np.uint8), bitorder="little").astype(bool)
        if flags.size < self._logits:
            flags = np.concatenate([flags, np.zeros(self._logits - flags.size, dtype=bool)])
        return flags[: self._logits]

    def mask(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        """Set every token the grammar refuses to -inf, in place."""
        logits[~self.allowed()] = -np.inf

    def accept(self, token: int) -> bool:
        """Advance past the sampled token; False if the grammar refused it (the row must fail)."""
        return bool(self._matcher.consume_token(token))

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and takes nothing more: the reply ends here."""
        return bool(self._matcher.is_stopped())

    @property
    def error(self) -> str:
        return str(self._matcher.get_error())


def from_llama(vocab: Any, end_tokens: list[int], n_vocab: int) -> Vocabulary:
    """A GGUF model's vocabulary, read through llama.cpp (its own tokenizer, special tokens marked)."""
    from llguidance.llamacpp import lltokenizer_from_vocab

    def build() -> LLTokenizer:
        with warnings.catch_warnings():  # it reads each token's attributes by a name llama.cpp deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            return lltokenizer_from_vocab(vocab, n_vocab=n_vocab, eos_token=end_tokens)

    return Vocabulary(build, n_vocab)


def from_transformers(tokenizer: Any, end_tokens: list[int], logits: int) -> Vocabulary:
    """A Hugging Face fast tokenizer's vocabulary (llguidance reads its tokenizer.json)."""
    from llguidance.hf import from_tokenizer

    return Vocabulary(lambda: from_tokenizer(tokenizer, n_vocab=logits, eos_token=end_tokens), logits)
