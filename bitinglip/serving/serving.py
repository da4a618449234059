"""OpenAI chat/completions, embeddings, images and the model list on top of an inference backend (the
gateway's worker-routing service online, a flow run's model pool offline): `n` choices and several
prompts fan out as concurrent requests (the worker's batcher batches them), streams are merged into one
stream of chunks. Responses are the typed protocol models; JSON and SSE only at the edge (the router, a
batch line)."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from bitinglip.errors import BitingLipError, InvalidRequest
from bitinglip.outputs import (
    Embeddings,
    GeneratedImage,
    Logprob,
    TextGeneration,
    TextStreamDelta,
    TextStreamError,
    TextStreamEvent,
)
from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams
from bitinglip.serving.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ImageGenerationRequest,
    ImageGenerationResponse,
    ImageObject,
    ModelCard,
    ModelCardList,
    SamplingFields,
    Usage,
    new_id,
    now,
)
from bitinglip.structured.tools import CallStream
from bitinglip.validation_errors import validation_message

log = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "tool_calls": "tool_calls"}


def _params(req: SamplingFields, index: int, **fields: Any) -> TextGenerationParams:
    """One engine request per choice; with a seed, choice i samples with seed+i so choices differ
    (the request's validation keeps seed+i in range). Anything the engine's shape still refuses is
    the caller's 400, never a 500."""
    seed = None if req.seed is None else req.seed + index
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    try:
        return TextGenerationParams(
            model=req.model,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=seed,
            stop=stop,
            keep_alive=req.keep_alive,
            min_tokens=req.min_tokens,
            ignore_eos=req.ignore_eos,
            response_format=req.response_format,
            **fields,
        )
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise InvalidRequest(message, param=param) from exc


def _chat_logprobs(entries: list[Logprob] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": list(e.token.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in e.top_logprobs],
            }
            for e in entries
        ]
    }


def _completion_logprobs(entries: list[Logprob] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    offsets, offset = [], 0
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top_logprobs) for e in entries],
        "text_offset": offsets,
    }


class InferenceBackend(Protocol):
    """What the OpenAI layer needs underneath: the gateway's worker-routing InferenceService online,
    a flow run's own model pool offline (batches)."""

    async def generate_text(self, params: TextGenerationParams) -> TextGeneration: ...

    async def embed(self, params: EmbeddingParams) -> Embeddings: ...

    async def stream_text(self, params: TextGenerationParams) -> tuple[str, AsyncIterator[TextStreamEvent]]: ...

    async def images(self, params: ImageParams, response_format: str) -> tuple[str, str, list[GeneratedImage]]: ...


class ModelEntry(Protocol):
    """What the model list reads of one model (the gateway's ModelView)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


class ModelCatalog(Protocol):
    """The models the caller may use (the gateway's ModelService, which filters by the caller bound
    for the request)."""

    async def list(self) -> Sequence[ModelEntry]: ...


class OpenAIServing:
    def __init__(self, inference: InferenceBackend, models: ModelCatalog | None = None) -> None:
        self.inference = inference
        self.models = models

    def _log_ignored(self, req: SamplingFields) -> None:
        if ignored := req.ignored_fields():
            log.info("ignoring unsupported OpenAI fields: %s", ", ".join(ignored))

    async def embeddings(self, req: EmbeddingRequest) -> EmbeddingResponse:
        if ignored := req.ignored_fields():
            log.info("ignoring unsupported OpenAI fields: %s", ", ".join(ignored))
        result = await self.inference.embed(
            EmbeddingParams(model=req.model, input=req.input, keep_alive=req.keep_alive)
        )
        vectors = result.data
        if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
            raise InvalidRequest(
                f"model {req.model!r} produces {len(vectors[0])} dimensions; it cannot give {req.dimensions}",
                param="dimensions",
            )

        def encode(vector: list[float]) -> list[float] | str:
            if req.encoding_format == "float":
                return vector
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

        return EmbeddingResponse(
            data=[EmbeddingData(index=i, embedding=encode(v)) for i, v in enumerate(vectors)],
            model=req.model,
            usage=EmbeddingUsage(prompt_tokens=result.usage.prompt_tokens, total_tokens=result.usage.total_tokens),
        )

    async def images(self, req: ImageGenerationRequest) -> ImageGenerationResponse:
        if ignored := req.ignored_fields():
            log.info("ignoring unsupported OpenAI fields: %s", ", ".join(ignored))
        width, height = (int(x) for x in req.size.split("x"))
        fields = {"num_inference_steps": req.num_inference_steps} if req.num_inference_steps else {}
        try:
            params = ImageParams(
                model=req.model,
                prompt=req.prompt,
                negative_prompt=req.negative_prompt,
                width=width,
                height=height,
                seed=req.seed,
                n=req.n,
                **fields,
            )
        except ValidationError as exc:
            message, param = validation_message(list(exc.errors()))
            raise InvalidRequest(message, param="size" if param in ("width", "height", None) else param) from exc
        _, _, data = await self.inference.images(params, req.response_format)
        return ImageGenerationResponse(created=now(), data=[ImageObject(b64_json=d.b64_json, url=d.url) for d in data])

    async def list_models(self) -> ModelCardList:
        """The ready models the caller may use: the model service filters by the caller bound for this
        request, as it does when any route resolves a model by name."""
        cards = []
        assert self.models is not None, "the model list is served by the gateway"
        for m in await self.models.list():
            if m.status == "ready":
                cards.append(ModelCard(id=m.name, created=int(m.created_at.timestamp()), root=m.id))
        return ModelCardList(data=cards)

    # -- chat

    def _chat_requests(self, req: ChatCompletionRequest) -> list[TextGenerationParams]:
        max_tokens = req.max_completion_tokens or req.max_tokens
        top = (req.top_logprobs or 0) if req.logprobs else None
        messages = [m.model_dump() for m in req.messages]
        tools = {"tools": req.tools, "tool_choice": req.tool_choice}
        return [_params(req, i, messages=messages, max_tokens=max_tokens, logprobs=top, **tools) for i in range(req.n)]

    async def chat(self, req: ChatCompletionRequest) -> ChatCompletionResponse:
        self._log_ignored(req)
        results = await asyncio.gather(*(self.inference.generate_text(p) for p in self._chat_requests(req)))
        usage = Usage()
        choices = []
        for i, r in enumerate(results):
            usage.add(r.usage)
            choices.append(
                ChatChoice(
                    index=i,
                    message=ChatMessageOut(content=None if r.tool_calls else r.text, tool_calls=r.tool_calls),
                    finish_reason=_FINISH[r.finish_reason],
                    logprobs=_chat_logprobs(r.logprobs),
                )
            )
        return ChatCompletionResponse(
            id=new_id("chatcmpl"), created=now(), model=req.model, choices=choices, usage=usage
        )

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
        self._log_ignored(req)
        chunk_id, created = new_id("chatcmpl"), now()

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
            return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [choice]}  # fmt: skip

        params = self._chat_requests(req)
        # with tools, each choice's text goes through a CallStream: content, or a call's name and arguments
        calls = [CallStream() if p.calls_tools else None for p in params]

        def on_delta(index: int, event: TextStreamDelta) -> list[dict[str, Any]]:
            logprobs = _chat_logprobs(event.logprobs)
            stream = calls[index]
            if stream is None:
                return [chunk(index, {"content": event.delta}, logprobs=logprobs)]
            deltas = stream.feed(event.delta) or ([{}] if logprobs else [])  # held text: its logprobs still go
            return [chunk(index, d, logprobs=logprobs if k == 0 else None) for k, d in enumerate(deltas)]

        def on_result(index: int, result: TextGeneration) -> list[dict[str, Any]]:
            stream = calls[index]
            held = [] if stream is None else [chunk(index, d) for d in stream.finish()]
            return [*held, chunk(index, {}, _FINISH[result.finish_reason])]

        def usage_chunk(usage: Usage) -> dict[str, Any]:
            return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [], "usage": usage.model_dump()}  # fmt: skip

        first = [chunk(i, {"role": "assistant", "content": ""}) for i in range(req.n)]
        return await self._stream(req, params, first, on_delta, on_result, usage_chunk)

    # -- completions

    def _completion_requests(self, req: CompletionRequest) -> list[TextGenerationParams]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        return [
            # raw, as in OpenAI and vLLM: a completion continues the text, never a chat template's turn
            _params(req, i, prompt=prompt, max_tokens=req.max_tokens or 16, logprobs=req.logprobs, raw=True)
            for prompt in prompts
            for i in range(req.n)
        ]

    async def complete(self, req: CompletionRequest) -> CompletionResponse:
        self._log_ignored(req)
        params = self._completion_requests(req)
        results = await asyncio.gather(*(self.inference.generate_text(p) for p in params))
        usage = Usage()
        choices = []
        for i, (p, r) in enumerate(zip(params, results, strict=True)):
            usage.add(r.usage)
            text = (p.prompt or "") + r.text if req.echo else r.text
            choices.append(
                CompletionChoice(
                    index=i,
                    text=text,
                    finish_reason=_FINISH[r.finish_reason],
                    logprobs=_completion_logprobs(r.logprobs),
                )
            )
        return CompletionResponse(id=new_id("cmpl"), created=now(), model=req.model, choices=choices, usage=usage)

    async def complete_stream(self, req: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        self._log_ignored(req)
        chunk_id, created = new_id("cmpl"), now()

        def chunk(index: int, text: str, finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
            choice = {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}
            return {"id": chunk_id, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [choice]}  # fmt: skip

        def usage_chunk(usage: Usage) -> dict[str, Any]:
            return {"id": chunk_id, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [], "usage": usage.model_dump()}  # fmt: skip

        return await self._stream(
            req,
            self._completion_requests(req),
            [],
            lambda i, e: [chunk(i, e.delta, logprobs=_completion_logprobs(e.logprobs))],
            lambda i, r: [chunk(i, "", _FINISH[r.finish_reason])],
            usage_chunk,
        )

    # -- shared streaming machinery

    async def _stream(
        self,
        req: SamplingFields,
        params: list[TextGenerationParams],
        first_chunks: list[dict[str, Any]],
        on_delta: Callable[[int, TextStreamDelta], list[dict[str, Any]]],
        on_result: Callable[[int, TextGeneration], list[dict[str, Any]]],
        usage_chunk: Callable[[Usage], dict[str, Any]],
    ) -> AsyncIterator[dict[str, Any]]:
        """Connects every choice's stream first (so errors are plain HTTP errors), then merges them."""
        streams = [(await self.inference.stream_text(p))[1] for p in params]
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def merged() -> AsyncIterator[dict[str, Any]]:
            queue: asyncio.Queue[tuple[int, TextStreamEvent] | None] = asyncio.Queue()

            async def pump(index: int, events: AsyncIterator[TextStreamEvent]) -> None:
                try:
                    async for event in events:
                        await queue.put((index, event))
                except BitingLipError as exc:
                    await queue.put((index, TextStreamError.of(exc)))
                finally:
                    await queue.put(None)

            tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
            usage, open_streams = Usage(), len(tasks)
            try:
                for c in first_chunks:
                    yield c
                while open_streams:
                    item = await queue.get()
                    if item is None:
                        open_streams -= 1
                        continue
                    index, event = item
                    if isinstance(event, TextStreamError):
                        yield {"error": event.error.model_dump()}
                    elif isinstance(event, TextStreamDelta):
                        for c in on_delta(index, event):
                            yield c
                    else:
                        usage.add(event.result.usage)
                        for c in on_result(index, event.result):
                            yield c
                if include_usage:
                    yield usage_chunk(usage)
            finally:
                for task in tasks:
                    task.cancel()

        return merged()
