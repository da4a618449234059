"""The OpenAI endpoints without HTTP: a batch flow run executes every line through the same serving
code as the gateway (same validation, same response bodies), on the flow run's own model pool.

The pool is handed in; this module imports no engine (hence no torch) itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from bitinglip.errors import InvalidRequest
from bitinglip.outputs import Embeddings, GeneratedImage, TextGeneration, TextStreamEvent
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams
from bitinglip.serving.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from bitinglip.serving.serving import OpenAIServing
from bitinglip.types import Priority
from bitinglip.validation_errors import validation_message

if TYPE_CHECKING:
    from bitinglip.engines.pool import ModelPool

Handler = Callable[[OpenAIServing, Any], Awaitable[BaseModel]]

ROUTES: dict[str, tuple[type[BaseModel], Handler]] = {
    "/v1/chat/completions": (ChatCompletionRequest, lambda serving, req: serving.chat(req)),
    "/v1/completions": (CompletionRequest, lambda serving, req: serving.complete(req)),
    "/v1/embeddings": (EmbeddingRequest, lambda serving, req: serving.embeddings(req)),
}


def check_body(url: str, body: dict[str, Any]) -> str | None:
    """Why this body is not a valid request for `url`, or None."""
    try:
        ROUTES[url][0].model_validate(body)
    except ValidationError as exc:
        return validation_message(exc.errors(), body)[0]
    return None


class PoolInference:
    """The serving layer's backend, on a local model pool at batch priority."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    async def generate_text(self, params: TextGenerationParams) -> TextGeneration:
        return (await self.pool.generate_text(params, Priority.BATCH)).to_output()

    async def embed(self, params: EmbeddingParams) -> Embeddings:
        return (await self.pool.embed(params.model, params.texts(), Priority.BATCH, params.keep_alive)).to_output()

    async def stream_text(self, params: TextGenerationParams) -> tuple[str, AsyncIterator[TextStreamEvent]]:
        raise InvalidRequest("stream is not supported in batches", param="stream")

    async def images(self, params: ImageParams, response_format: str) -> tuple[str, str, list[GeneratedImage]]:
        raise InvalidRequest("images are not supported in batches", param="url")


class OfflineOpenAI:
    def __init__(self, pool: ModelPool) -> None:
        self.serving = OpenAIServing(PoolInference(pool))

    async def run(self, url: str, body: dict[str, Any]) -> BaseModel:
        """The typed response the online endpoint would have returned; BitingLipError otherwise."""
        request_type, handler = ROUTES[url]
        return await handler(self.serving, request_type.model_validate(body))

    async def execute(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """The response body (JSON) the online endpoint would have returned; BitingLipError otherwise."""
        return (await self.run(url, body)).model_dump(mode="json")
