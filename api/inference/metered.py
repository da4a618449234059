"""The inference service as one caller sees it: each call first checks the caller's daily quota,
then charges what it used (tokens for text and embeddings, images for images)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from api.inference.service import InferenceService
from bitinglip.auth.limits import Limiter
from bitinglip.auth.principal import Principal
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams


class MeteredInference:
    def __init__(self, inner: InferenceService, limiter: Limiter, who: Principal) -> None:
        self.inner = inner
        self.limiter = limiter
        self.who = who

    async def _charge_usage(self, result: dict[str, Any]) -> None:
        await self.limiter.charge(self.who, "tokens", int(result.get("usage", {}).get("total_tokens", 0)))

    async def generate_text(self, params: TextGenerationParams) -> dict[str, Any]:
        await self.limiter.check_quota(self.who, "tokens")
        result = await self.inner.generate_text(params)
        await self._charge_usage(result)
        return result

    async def embed(self, params: EmbeddingParams) -> dict[str, Any]:
        await self.limiter.check_quota(self.who, "tokens")
        result = await self.inner.embed(params)
        await self._charge_usage(result)
        return result

    async def stream_text(self, params: TextGenerationParams) -> tuple[str, AsyncIterator[dict[str, Any]]]:
        await self.limiter.check_quota(self.who, "tokens")
        model_id, events = await self.inner.stream_text(params)

        async def charged() -> AsyncIterator[dict[str, Any]]:
            async for event in events:
                if "result" in event:
                    await self._charge_usage(event["result"])
                yield event

        return model_id, charged()

    async def images(self, params: ImageParams, response_format: str) -> tuple[str, str, list[dict[str, Any]]]:
        await self.limiter.check_quota(self.who, "images")
        await self.limiter.charge(self.who, "images", params.n)
        return await self.inner.images(params, response_format, owner=self.who.username)
