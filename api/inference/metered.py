"""The inference service as one caller sees it: each call reserves the most it may cost from the
caller's daily quota before it starts (so concurrent calls cannot overshoot the quota together) and
settles the real count when it ends: tokens for text and embeddings, images for images.

A call that fails with one of our errors is not charged. A stream the client drops is charged its
prompt estimate and the tokens relayed so far (the worker stops at its next token); any other way a
call can end without a count (cancelled, an unexpected error) is charged its whole reservation."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from api.inference.schemas import RoutedEmbeddings, TextInferenceResponse
from api.inference.service import InferenceService
from bitinglip.auth.limits import Limiter
from bitinglip.auth.principal import Principal, QuotaKind
from bitinglip.auth.usage import (
    Hold,
    UsageLedger,
    embedding_tokens_estimate,
    prompt_tokens_estimate,
    text_tokens_estimate,
)
from bitinglip.errors import BitingLipError
from bitinglip.outputs import GeneratedImage, TextStreamDelta, TextStreamEvent, TextStreamResult
from bitinglip.result_cache import DEFAULT_USE, CacheUse
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams

T = TypeVar("T")


def _settle_in_background(ledger: UsageLedger, hold_id: str, amount: int) -> None:
    """The last resort for a reservation whose owner was dropped unsettled (a stream never read)."""
    threading.Thread(target=ledger.settle, args=(hold_id, amount), name="settle-dropped", daemon=True).start()


class Reservation:
    """One call's hold on its caller's quota. Settled once: with the real count when known; if it is
    garbage-collected unsettled, with the whole reservation."""

    def __init__(self, limiter: Limiter, hold: Hold) -> None:
        self.limiter = limiter
        self.hold = hold
        self.settled = False
        assert limiter.ledger is not None
        self._last_resort = weakref.finalize(self, _settle_in_background, limiter.ledger, hold.id, hold.amount)
        self._last_resort.atexit = False

    async def settle(self, actual: int) -> None:
        """Also when the caller is being cancelled (a client that went away): the DB write is shielded,
        so cancelling the wait does not cancel the write before a thread has picked it up."""
        if self.settled:
            return
        self.settled = True
        self._last_resort.detach()
        ledger = self.limiter.ledger
        assert ledger is not None
        write = asyncio.get_running_loop().run_in_executor(None, ledger.settle, self.hold.id, actual)
        await asyncio.shield(write)

    @asynccontextmanager
    async def charged_on_failure(self) -> AsyncIterator[None]:
        """What a call that ends in an exception costs: our own errors nothing, anything else (a
        cancel, an unexpected error) the whole reservation."""
        try:
            yield
        except BitingLipError:
            await self.settle(0)
            raise
        except BaseException:
            await self.settle(self.hold.amount)
            raise


class MeteredInference:
    def __init__(
        self, inner: InferenceService, limiter: Limiter, who: Principal, cache: CacheUse = DEFAULT_USE
    ) -> None:
        self.inner = inner
        self.limiter = limiter
        self.who = who
        self.cache = cache  # a replayed answer is charged what it reports, like the call it replays

    @property
    def _default_max_tokens(self) -> int:
        return self.inner.settings.default_max_tokens

    async def _reserve(self, kind: QuotaKind, amount: int) -> Reservation:
        return Reservation(self.limiter, await self.limiter.reserve(self.who, kind, amount))

    async def _metered(
        self, kind: QuotaKind, amount: int, call: Callable[[], Awaitable[T]], used: Callable[[T], int]
    ) -> T:
        reservation = await self._reserve(kind, amount)
        async with reservation.charged_on_failure():
            result = await call()
        await reservation.settle(used(result))
        return result

    async def generate_text(self, params: TextGenerationParams) -> TextInferenceResponse:
        params.check_limits(self.inner.settings)  # a 400 before a 429: an oversize request reserves nothing
        amount = text_tokens_estimate(params, self._default_max_tokens)
        return await self._metered(
            "tokens", amount, lambda: self.inner.generate_text(params, self.cache), lambda r: r.usage.total_tokens
        )

    async def embed(self, params: EmbeddingParams) -> RoutedEmbeddings:
        params.check_limits(self.inner.settings)  # a request that can never run is a 400, never a 429
        amount = embedding_tokens_estimate(params.texts())
        return await self._metered(
            "tokens", amount, lambda: self.inner.embed(params, self.cache), lambda r: r.usage.total_tokens
        )

    async def images(self, params: ImageParams, response_format: str) -> tuple[str, str, list[GeneratedImage]]:
        params.check_limits(self.inner.settings)
        return await self._metered(
            "images",
            params.n,
            lambda: self.inner.images(params, response_format, owner=self.who.username),
            lambda result: len(result[2]),
        )

    async def stream_text(self, params: TextGenerationParams) -> tuple[str, AsyncIterator[TextStreamEvent]]:
        params.check_limits(self.inner.settings)
        amount = text_tokens_estimate(params, self._default_max_tokens)
        reservation = await self._reserve("tokens", amount)
        async with reservation.charged_on_failure():
            model_id, events = await self.inner.stream_text(params)
        prompt = prompt_tokens_estimate(params)

        async def metered() -> AsyncIterator[TextStreamEvent]:
            relayed = 0
            try:
                async for event in events:
                    if isinstance(event, TextStreamResult):
                        await reservation.settle(event.result.usage.total_tokens)
                    elif isinstance(event, TextStreamDelta):
                        relayed += 1
                    yield event
            finally:
                if not reservation.settled:  # dropped, or broken off: what the gateway saw of it
                    await reservation.settle(min(amount, prompt + relayed))

        return model_id, metered()
