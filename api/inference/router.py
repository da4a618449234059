from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter

from api.deps import InferenceDep
from api.inference.schemas import (
    Embedding,
    EmbeddingInferenceRequest,
    EmbeddingInferenceResponse,
    ImageInferenceRequest,
    ImageInferenceResponse,
    TextInferenceRequest,
    TextInferenceResponse,
)
from api.inference.service import stream_error
from api.sse import sse_response
from bitinglip.errors import BitingLipError
from bitinglip.outputs import TextStreamEvent

router = APIRouter(prefix="/api/v1/inference", tags=["inference"])


@router.post(
    "/text",
    response_model=TextInferenceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream=true"}},
)
async def generate_text(body: TextInferenceRequest, inference: InferenceDep) -> Any:
    if not body.stream:
        return await inference.generate_text(body)
    model_id, events = await inference.stream_text(body)
    return sse_response(_chunks(model_id, events))


@router.post("/embeddings", response_model=EmbeddingInferenceResponse)
async def embed(body: EmbeddingInferenceRequest, inference: InferenceDep) -> EmbeddingInferenceResponse:
    result = await inference.embed(body)
    return EmbeddingInferenceResponse(
        model=result.model,
        worker=result.worker,
        data=[Embedding(index=i, embedding=v) for i, v in enumerate(result.data)],
        dimensions=len(result.data[0]) if result.data else 0,
        usage=result.usage,
        timings=result.timings,
    )


@router.post("/image", response_model=ImageInferenceResponse)
async def generate_image(body: ImageInferenceRequest, inference: InferenceDep) -> ImageInferenceResponse:
    model, worker, data = await inference.images(body, body.response_format)
    return ImageInferenceResponse(model=model, worker=worker, data=data, timings={})


async def _chunks(model_id: str, events: AsyncIterator[TextStreamEvent]) -> AsyncIterator[dict[str, Any]]:
    """The worker's events as SSE chunks, tagged with the model. An error after the first byte can only
    be an event; the stream then ends normally."""
    try:
        async for event in events:
            yield {"model": model_id, **event.model_dump(mode="json")}
    except BitingLipError as exc:
        yield stream_error(exc)
