from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import OpenAIServingDep
from api.sse import sse_response
from bitinglip.serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ImageGenerationRequest,
    ImageGenerationResponse,
    ModelCardList,
)

router = APIRouter(prefix="/v1", tags=["openai"])

_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream=true"}
}


@router.get("/models", response_model=ModelCardList)
async def list_models(serving: OpenAIServingDep) -> ModelCardList:
    return await serving.list_models()


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=_SSE)
async def chat_completions(body: ChatCompletionRequest, serving: OpenAIServingDep) -> Any:
    if body.stream:
        return sse_response(await serving.chat_stream(body))
    return await serving.chat(body)


@router.post("/embeddings", response_model=EmbeddingResponse)
async def embeddings(body: EmbeddingRequest, serving: OpenAIServingDep) -> EmbeddingResponse:
    return await serving.embeddings(body)


@router.post("/images/generations", response_model=ImageGenerationResponse)
async def images(body: ImageGenerationRequest, serving: OpenAIServingDep) -> ImageGenerationResponse:
    return await serving.images(body)


@router.post("/completions", response_model=CompletionResponse, responses=_SSE)
async def completions(body: CompletionRequest, serving: OpenAIServingDep) -> Any:
    if body.stream:
        return sse_response(await serving.complete_stream(body))
    return await serving.complete(body)
