"""The OpenAI-compatible API, driven by the official `openai` client against the running gateway."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import CAPITAL, TEXT_MODEL_FP32
from tests.platform_harness import Platform

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(platform: Platform) -> openai.OpenAI:
    return platform.sdk()


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids


def test_chat_completion_answers_paris(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=CAPITAL, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    choice = response.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert response.usage is not None and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_chat_streaming_deltas_equal_the_non_stream_text(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": CAPITAL, "max_tokens": 24, "temperature": 0}
    computed = {"Cache-Control": "no-store"}  # computed now, like the stream: not an earlier test's stored reply
    plain = client.chat.completions.create(**kwargs, extra_headers=computed).choices[0].message.content  # type: ignore[call-overload]
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            deltas.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert len([d for d in deltas if d]) > 1
    assert "".join(deltas) == plain
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


def test_completion_with_stop_n_and_logprobs(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=12, temperature=0, stop=[" 7"], n=2, logprobs=2
    )
    assert len(response.choices) == 2
    for choice in response.choices:
        assert choice.text.startswith(" 4, 5, 6,") and "7" not in choice.text
        assert choice.finish_reason == "stop"
        assert choice.logprobs is not None and choice.logprobs.tokens
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs or [])
    single = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=1).usage
    assert response.usage is not None and single is not None
    assert response.usage.prompt_tokens == 2 * single.prompt_tokens  # usage sums over choices


def test_completion_streaming(client: openai.OpenAI) -> None:
    computed = {"Cache-Control": "no-store"}  # computed now, like the stream: not an earlier test's stored reply
    plain = (
        client.completions.create(
            model=MODEL, prompt="The sky is", max_tokens=10, temperature=0, extra_headers=computed
        )
        .choices[0]
        .text
    )
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="The sky is", max_tokens=10, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == plain


@pytest.mark.parametrize(("model", "n"), [(TEXT_MODEL_FP32, 2), (MODEL, 1)])
def test_seeded_choices_are_reproducible(client: openai.OpenAI, model: str, n: int) -> None:
    """OpenAI calls `seed` best effort, and so is it here for llama.cpp: its batched kernels round
    differently with the batch's shape, so choices sampled side by side (n > 1) may differ from one call
    to the next there; a seeded request that runs alone repeats. On transformers, any batch repeats."""
    kwargs = {"model": model, "messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 8,
              "temperature": 1.0, "seed": 11, "n": n}  # fmt: skip
    first = [c.message.content for c in client.chat.completions.create(**kwargs).choices]  # type: ignore[call-overload]
    second = [c.message.content for c in client.chat.completions.create(**kwargs).choices]  # type: ignore[call-overload]
    assert first == second and len(first) == n


def test_unknown_extra_fields_are_ignored(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
        extra_body={"frequency_penalty_v2": 1, "guided_choice": ["a"]},
    )
    assert response.choices[0].message.content


def test_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="no-such-model", messages=CAPITAL)  # type: ignore[arg-type]
    assert error.value.code == "model_not_found"


def test_bad_parameters_raise_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=3.5)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="hello " * 9000, max_tokens=8)
    assert too_long.value.code == "context_length_exceeded"


@pytest.mark.parametrize("model", [MODEL, TEXT_MODEL_FP32])
def test_min_tokens_and_ignore_eos_set_the_reply_length(client: openai.OpenAI, model: str) -> None:
    """vLLM's sampling extensions, on both backends: the short answer to CAPITAL goes on past its end
    with `min_tokens`, and runs to exactly `max_tokens` with `ignore_eos` (what benchmarks need)."""
    short = client.chat.completions.create(model=model, messages=CAPITAL, max_tokens=64, temperature=0)  # type: ignore[arg-type]
    assert short.usage is not None and short.usage.completion_tokens < 30 and short.choices[0].finish_reason == "stop"
    longer = client.chat.completions.create(
        model=model,
        messages=CAPITAL,
        max_tokens=64,
        temperature=0,
        extra_body={"min_tokens": 40},  # type: ignore[arg-type]
    )
    assert longer.usage is not None and longer.usage.completion_tokens >= 40
    exact = client.chat.completions.create(
        model=model,
        messages=CAPITAL,
        max_tokens=48,
        temperature=0,
        extra_body={"ignore_eos": True},  # type: ignore[arg-type]
    )
    assert exact.usage is not None and exact.usage.completion_tokens == 48
    assert exact.choices[0].finish_reason == "length"


HOSTILE_LENGTHS = [
    {"min_tokens": -1},
    {"min_tokens": 65},  # past max_tokens
    {"min_tokens": "many"},
    {"ignore_eos": [1]},
    {"min_tokens": 2**70},
]


@pytest.mark.parametrize("extra", HOSTILE_LENGTHS)
def test_hostile_min_tokens_and_ignore_eos_are_400(client: openai.OpenAI, extra: dict[str, object]) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=CAPITAL, max_tokens=64, extra_body=extra)  # type: ignore[arg-type]
