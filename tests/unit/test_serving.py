"""The OpenAI serving layer without HTTP: protocol validation, and request -> engine calls -> typed
response shaping, on a fake backend (no gateway, no worker, no model)."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from bitinglip.errors import InvalidRequest
from bitinglip.outputs import (
    Embeddings,
    EmbeddingTimings,
    GeneratedImage,
    Logprob,
    PromptUsage,
    TextGeneration,
    TextStreamDelta,
    TextStreamEvent,
    TextStreamResult,
    TextTimings,
    TextUsage,
)
from bitinglip.schemas import MAX_SEED, EmbeddingParams, ImageParams, TextGenerationParams
from bitinglip.serving.offline import OfflineOpenAI, PoolInference, check_body
from bitinglip.serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
)
from bitinglip.serving.serving import OpenAIServing
from bitinglip.types import FinishReason

USER = [{"role": "user", "content": "hi"}]


def _result(text: str, finish: FinishReason = "stop", logprobs: list[Logprob] | None = None) -> TextGeneration:
    return TextGeneration(
        text=text,
        finish_reason=finish,
        usage=TextUsage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
        logprobs=logprobs,
        timings=TextTimings(queue_seconds=0.0, first_token_seconds=0.1, total_seconds=0.2, batch_size=1),
    )


def _embeddings(vectors: list[list[float]]) -> Embeddings:
    return Embeddings(
        data=vectors,
        usage=PromptUsage(prompt_tokens=4, total_tokens=4),
        timings=EmbeddingTimings(total_seconds=0.1, batch_size=1),
    )


@dataclass
class FakeBackend:
    """Records every engine call; answers with canned results."""

    texts: list[TextGenerationParams] = field(default_factory=list)
    finish: FinishReason = "stop"
    logprobs: list[Logprob] | None = None
    vectors: list[list[float]] = field(default_factory=lambda: [[0.5, -1.0, 2.0]])

    async def generate_text(self, params: TextGenerationParams) -> TextGeneration:
        self.texts.append(params)
        return _result(f"out{len(self.texts) - 1}", self.finish, self.logprobs)

    async def embed(self, params: EmbeddingParams) -> Embeddings:
        return _embeddings(self.vectors)

    async def stream_text(self, params: TextGenerationParams) -> tuple[str, AsyncIterator[TextStreamEvent]]:
        self.texts.append(params)

        async def events() -> AsyncIterator[TextStreamEvent]:
            yield TextStreamDelta(delta="Pa")
            yield TextStreamDelta(delta="ris")
            yield TextStreamResult(result=_result("Paris", "length"))

        return "m@1", events()

    async def images(self, params: ImageParams, response_format: str) -> tuple[str, str, list[GeneratedImage]]:
        return "img@1", "w1", [GeneratedImage(seed=1, b64_json="AAAA")] * params.n


@dataclass
class Model:
    id: str
    name: str
    status: str
    created_at: datetime


class FakeCatalog:
    async def list(self) -> list[Model]:
        created = datetime(2024, 1, 2, tzinfo=UTC)
        return [Model("a@1", "a", "ready", created), Model("b@1", "b", "downloading", created)]


# -- protocol validation


def test_seed_must_leave_room_for_n_choices() -> None:
    ChatCompletionRequest(model="m", messages=USER, n=2, seed=MAX_SEED - 1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="seed \\+ i"):
        ChatCompletionRequest(model="m", messages=USER, n=2, seed=MAX_SEED)  # type: ignore[arg-type]


@pytest.mark.parametrize("stop", [[""], ["x"] * 9, "y" * 257, ["ok", "z" * 10_000]])
def test_stop_takes_up_to_eight_short_non_empty_strings(stop: str | list[str]) -> None:
    """Every token checks every stop string on the one compute thread: a huge one would slow everyone."""
    with pytest.raises(ValidationError, match="stop takes up to 8"):
        CompletionRequest(model="m", prompt="p", stop=stop)
    if isinstance(stop, list) and len(stop) <= 8 and all(stop):
        with pytest.raises(ValidationError):
            TextGenerationParams(prompt="p", stop=stop)


def test_completion_prompts_times_n_is_bounded() -> None:
    CompletionRequest(model="m", prompt=["p"] * 4, n=4)
    with pytest.raises(ValidationError, match="at most 16 choices"):
        CompletionRequest(model="m", prompt=["p"] * 4, n=5)
    with pytest.raises(ValidationError, match="non-empty"):
        CompletionRequest(model="m", prompt=["p", ""])


def test_unknown_fields_are_accepted_and_reported() -> None:
    body = {"model": "m", "messages": USER, "tools": [], "frequency_penalty": 1, "logit_bias": {}}
    req = ChatCompletionRequest.model_validate(body)
    assert req.ignored_fields() == ["frequency_penalty", "logit_bias"]  # tools are a field now


def test_fields_whose_loss_would_change_the_reply_are_refused() -> None:
    with pytest.raises(ValidationError, match="use tools"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "functions": [{"name": "f"}]})


def test_check_body_says_why_a_batch_line_is_invalid() -> None:
    assert check_body("/v1/chat/completions", {"model": "m", "messages": USER}) is None
    assert check_body("/v1/embeddings", {"model": "m", "input": "x"}) is None
    assert check_body("/v1/chat/completions", {"model": "m", "messages": []})
    assert check_body("/v1/completions", {"model": "m"})


# -- response shaping


async def test_chat_fans_out_n_choices_with_consecutive_seeds_and_sums_usage() -> None:
    backend = FakeBackend(finish="cancelled")
    req = ChatCompletionRequest(model="m", messages=USER, n=3, seed=7, max_completion_tokens=5, stop="!")  # type: ignore[arg-type]
    response = await OpenAIServing(backend).chat(req)
    assert isinstance(response, ChatCompletionResponse)
    assert [p.seed for p in backend.texts] == [7, 8, 9]
    assert all(p.max_tokens == 5 and p.stop == ["!"] and p.logprobs is None for p in backend.texts)
    assert response.id.startswith("chatcmpl-") and response.model == "m"
    assert [c.message.content for c in response.choices] == ["out0", "out1", "out2"]
    assert {c.finish_reason for c in response.choices} == {"stop"}  # a cancelled choice stopped
    assert response.usage.model_dump() == {
        "prompt_tokens": 9,
        "completion_tokens": 6,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_chat_logprobs_take_the_openai_shape() -> None:
    backend = FakeBackend(logprobs=[Logprob(token="é", logprob=-0.5, top_logprobs=[("é", -0.5), ("e", -1.0)])])
    req = ChatCompletionRequest(model="m", messages=USER, logprobs=True, top_logprobs=2)  # type: ignore[arg-type]
    response = await OpenAIServing(backend).chat(req)
    assert backend.texts[0].logprobs == 2
    assert response.choices[0].logprobs == {
        "content": [
            {
                "token": "é",
                "logprob": -0.5,
                "bytes": [195, 169],
                "top_logprobs": [
                    {"token": "é", "logprob": -0.5, "bytes": [195, 169]},
                    {"token": "e", "logprob": -1.0, "bytes": [101]},
                ],
            }
        ]
    }


async def test_completion_echo_and_logprob_offsets() -> None:
    entries = [
        Logprob(token="ab", logprob=-0.1, top_logprobs=[("ab", -0.1)]),
        Logprob(token="c", logprob=-0.2, top_logprobs=[("c", -0.2)]),
    ]
    backend = FakeBackend(finish="length", logprobs=entries)
    req = CompletionRequest(model="m", prompt=["p0", "p1"], n=2, echo=True, logprobs=1)
    response = await OpenAIServing(backend).complete(req)
    assert [p.prompt for p in backend.texts] == ["p0", "p0", "p1", "p1"]
    assert all(p.max_tokens == 16 for p in backend.texts)  # the OpenAI default
    assert [c.text for c in response.choices] == ["p0out0", "p0out1", "p1out2", "p1out3"]
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert response.choices[0].finish_reason == "length"
    assert response.choices[0].logprobs == {
        "tokens": ["ab", "c"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"ab": -0.1}, {"c": -0.2}],
        "text_offset": [0, 2],
    }
    assert response.usage.total_tokens == 20


async def test_embeddings_base64_and_dimensions() -> None:
    serving = OpenAIServing(FakeBackend())
    plain = await serving.embeddings(EmbeddingRequest(model="e", input="x"))
    assert plain.data[0].embedding == [0.5, -1.0, 2.0] and plain.usage.total_tokens == 4
    packed = await serving.embeddings(EmbeddingRequest(model="e", input="x", encoding_format="base64"))
    raw = base64.b64decode(str(packed.data[0].embedding))
    assert list(struct.unpack("<3f", raw)) == [0.5, -1.0, 2.0]
    with pytest.raises(InvalidRequest, match="produces 3 dimensions") as exc:
        await serving.embeddings(EmbeddingRequest(model="e", input="x", dimensions=2))
    assert exc.value.param == "dimensions"


async def test_images_data_and_size_refusal() -> None:
    serving = OpenAIServing(FakeBackend())
    response = await serving.images(ImageGenerationRequest(prompt="a cat", n=2, size="64x32"))
    assert [d.b64_json for d in response.data] == ["AAAA", "AAAA"] and response.data[0].url is None
    with pytest.raises(InvalidRequest) as exc:  # the engine's shape refuses it: the caller's 400, on `size`
        await serving.images(ImageGenerationRequest(prompt="a cat", size="4x4"))
    assert exc.value.param == "size" and exc.value.status_code == 400


async def test_model_list_shows_ready_models_only() -> None:
    cards = await OpenAIServing(FakeBackend(), FakeCatalog()).list_models()
    assert [(c.id, c.root, c.created) for c in cards.data] == [("a", "a@1", 1704153600)]


async def test_chat_stream_is_role_deltas_finish_usage() -> None:
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    )
    stream = await OpenAIServing(FakeBackend()).chat_stream(req)
    chunks = [chunk async for chunk in stream]  # api/sse.py frames them and adds [DONE]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Pa"}, {"content": "ris"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5


# -- the offline runner


@dataclass
class _Result:
    """Stands in for an engine's result dataclass."""

    output: TextGeneration | Embeddings

    def to_output(self) -> TextGeneration | Embeddings:
        return self.output


class FakePool:
    async def generate_text(self, params: TextGenerationParams, priority: Any) -> _Result:
        return _Result(_result("offline"))

    async def embed(self, model: str, texts: list[str], priority: Any, keep_alive: Any = None) -> _Result:
        return _Result(_embeddings([[1.0]] * len(texts)))


async def test_offline_runner_returns_the_online_body() -> None:
    runner = OfflineOpenAI(FakePool())  # type: ignore[arg-type]
    body = await runner.execute("/v1/chat/completions", {"model": "m", "messages": USER})
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "offline"
    embedded = await runner.execute("/v1/embeddings", {"model": "e", "input": ["a", "b"]})
    assert [d["embedding"] for d in embedded["data"]] == [[1.0], [1.0]]
    with pytest.raises(InvalidRequest, match="stream is not supported") as exc:
        await PoolInference(FakePool()).stream_text(TextGenerationParams(prompt="p"))  # type: ignore[arg-type]
    assert exc.value.param == "stream"
