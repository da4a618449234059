"""Structured output and tool calling through the real platform with the official openai SDK (and plain
HTTP for the native route, async jobs and batches), on SmolLM2 served by llama.cpp."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from tests.conftest import TEXT_MODEL
from tests.platform_harness import Platform
from tests.test_batches import jsonl, parse, wait_batch
from tests.test_gateway_text import assert_envelope
from tests.test_jobs import submit, wait_done

MODEL = TEXT_MODEL
ASK = [{"role": "user", "content": "Which city is the capital of France? Answer as JSON."}]
WEATHER_ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


class Capital(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=40)  # bounded: a 135M model at temperature 0.9 may ramble in a string
    country: str = Field(max_length=40)
    is_capital: bool


class GetWeather(BaseModel):
    """Current weather in a city."""

    model_config = ConfigDict(extra="forbid")
    city: str
    unit: str


WEATHER = openai.pydantic_function_tool(GetWeather, name="get_weather")
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now", "strict": True}}


@pytest.fixture(scope="module")
def client(platform: Platform) -> openai.OpenAI:
    return platform.sdk()


def capital_format(name: str = "capital") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": Capital.model_json_schema(), "strict": True}}


# -- structured output


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_sdk_parse_gives_a_valid_object_for_every_seed(client: openai.OpenAI, temperature: float) -> None:
    for seed in range(4):
        completion = client.chat.completions.parse(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            response_format=Capital,
            temperature=temperature,
            seed=seed,
            max_tokens=200,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Capital), choice.message.content


def test_json_object_on_chat_and_a_schema_on_completions(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=120,  # type: ignore[arg-type]
    )
    assert chat.choices[0].finish_reason == "stop" and isinstance(
        json.loads(chat.choices[0].message.content or ""), dict
    )
    completion = client.completions.create(
        model=MODEL,
        prompt="The capital of France, as JSON:",
        max_tokens=120,
        temperature=0.7,
        seed=3,
        extra_body={"response_format": capital_format()},
    )
    assert completion.choices[0].finish_reason == "stop"
    Capital.model_validate_json(completion.choices[0].text)


def test_max_tokens_running_out_mid_object_is_length(client: openai.OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):  # what the SDK does with OpenAI's own "length"
        client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Capital, max_tokens=5)  # type: ignore[arg-type]
    cut = client.chat.completions.create(model=MODEL, messages=ASK, response_format=capital_format(), max_tokens=5)  # type: ignore[arg-type]
    assert cut.choices[0].finish_reason == "length" and cut.usage and cut.usage.completion_tokens == 5


def test_streamed_structured_output_equals_the_whole_reply(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": ASK, "response_format": capital_format(), "temperature": 0}
    whole = client.chat.completions.create(**kwargs, max_tokens=120).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**kwargs, max_tokens=120, stream=True)
        if c.choices
    )
    assert streamed == whole and Capital.model_validate_json(streamed)


def test_native_route_takes_response_format(platform: Platform) -> None:
    body = {"model": MODEL, "messages": ASK, "response_format": capital_format(), "max_tokens": 120, "temperature": 0}
    response = platform.client().post("/api/v1/inference/text", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["finish_reason"] == "stop"
    Capital.model_validate_json(response.json()["text"])


def test_an_async_job_follows_its_response_format(platform: Platform) -> None:
    http = platform.client()
    params = {"model": MODEL, "messages": ASK, "response_format": capital_format(), "max_tokens": 120, "seed": 5}
    job, _ = wait_done(http, submit(http, params)["id"])
    assert job["status"] == "completed", job
    Capital.model_validate_json(job["result"]["text"])
    refused = http.post(
        "/api/v1/tasks",
        json={
            "type": "text",
            "params": {
                **params,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
            },
        },
    )
    assert assert_envelope(refused, 400)["param"] == "response_format"  # at the door, never queued


def test_a_batch_line_follows_its_response_format(client: openai.OpenAI) -> None:
    body = {"model": MODEL, "messages": ASK, "response_format": capital_format(), "max_tokens": 120, "temperature": 0}
    line = {"custom_id": "capital", "method": "POST", "url": "/v1/chat/completions", "body": body}
    upload = client.files.create(file=("input.jsonl", jsonl([line])), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 1, done
    [output] = parse(client.files.content(done.output_file_id).text)
    Capital.model_validate_json(output["response"]["body"]["choices"][0]["message"]["content"])


def test_tenants_with_their_own_schemas_at_once_each_get_their_own(platform: Platform) -> None:
    """Rows of several users in one batch: each row is held to its own grammar, nothing is shared."""
    admin = platform.client()
    schemas = {
        "alice": {
            "type": "object",
            "properties": {"alice_says": {"type": "string"}},
            "required": ["alice_says"],
            "additionalProperties": False,
        },
        "bob": {
            "type": "object",
            "properties": {"bob_count": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["bob_count"],
            "additionalProperties": False,
        },
    }
    replies: dict[str, str] = {}

    def ask(name: str) -> None:
        username = f"{name}-{uuid.uuid4().hex[:6]}"
        assert admin.post("/api/v1/users", json={"username": username}).status_code == 201
        key = admin.post("/api/v1/auth/keys", json={"username": username, "name": "t"}).json()["key"]
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schemas[name]}}
        for seed in range(3):
            reply = platform.sdk(key).chat.completions.create(
                model=MODEL, messages=ASK, response_format=fmt, seed=seed, max_tokens=80
            )  # type: ignore[arg-type]
            replies[f"{name}{seed}"] = reply.choices[0].message.content or ""

    threads = [threading.Thread(target=ask, args=(name,)) for name in schemas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key, text in replies.items():
        assert set(json.loads(text)) == ({"alice_says"} if key.startswith("alice") else {"bob_count"}), text


# -- tool calling


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_required_call_is_well_formed(client: openai.OpenAI, choice: Any) -> None:
    for seed in range(3):
        completion = client.chat.completions.parse(
            model=MODEL,
            messages=WEATHER_ASK,
            tools=[WEATHER, CLOCK],
            tool_choice=choice,
            seed=seed,
            temperature=0.8,
            max_tokens=100,  # type: ignore[arg-type]
        )
        choice_out = completion.choices[0]
        assert choice_out.finish_reason == "tool_calls" and choice_out.message.content is None
        [call] = choice_out.message.tool_calls or []
        assert call.id.startswith("call_") and call.type == "function"
        if isinstance(choice, dict) or call.function.name == "get_weather":
            assert call.function.name == "get_weather" and isinstance(call.function.parsed_arguments, GetWeather)
        else:
            assert call.function.name == "get_time" and json.loads(call.function.arguments) == {}


def test_auto_gives_text_or_a_well_formed_call_and_none_gives_text(client: openai.OpenAI) -> None:
    for seed in range(3):
        auto = client.chat.completions.create(
            model=MODEL,
            messages=WEATHER_ASK,
            tools=[WEATHER],
            seed=seed,
            temperature=1.0,
            max_tokens=60,  # type: ignore[arg-type,list-item]
        ).choices[0]
        if auto.message.tool_calls:
            assert auto.finish_reason == "tool_calls"
            GetWeather.model_validate_json(auto.message.tool_calls[0].function.arguments)  # type: ignore[union-attr]
        else:
            assert auto.finish_reason in ("stop", "length") and auto.message.content
    none = client.chat.completions.create(
        model=MODEL, messages=WEATHER_ASK, tools=[WEATHER], tool_choice="none", max_tokens=30, temperature=0
    )  # type: ignore[arg-type,list-item]
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content


def test_streamed_tool_calls_come_as_openai_streams_them(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": WEATHER_ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 100,
    }
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls or []
    chunks = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    calls = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather" and calls[0].type == "function"
    assert all(tc.index == 0 and tc.id is None and tc.function and tc.function.name is None for tc in calls[1:])
    assert len(calls) > 2  # the arguments arrive in fragments, as they are generated
    arguments = "".join((tc.function and tc.function.arguments) or "" for tc in calls)
    assert arguments == whole[0].function.arguments and GetWeather.model_validate_json(arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]
    assert not any(c.choices[0].delta.content for c in chunks)
    with client.chat.completions.stream(**kwargs) as stream:  # the SDK's own stream helper reassembles it
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.tool_calls[0].function.parsed_arguments, GetWeather)  # type: ignore[index]


def test_a_history_with_calls_and_tool_answers_is_accepted(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=WEATHER_ASK, tools=[WEATHER], tool_choice="required", max_tokens=100, temperature=0
    )  # type: ignore[arg-type]
    call = (first.choices[0].message.tool_calls or [])[0]
    history = [
        *WEATHER_ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=40, temperature=0
    )  # type: ignore[arg-type]
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")


def test_native_route_returns_tool_calls(platform: Platform) -> None:
    body = {"model": MODEL, "messages": WEATHER_ASK, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 100}
    response = platform.client().post("/api/v1/inference/text", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["finish_reason"] == "tool_calls" and out["tool_calls"][0]["function"]["name"] == "get_weather"
    assert out["text"].startswith("<tool_call>")  # what the model wrote; tool_calls is its reading
    GetWeather.model_validate_json(out["tool_calls"][0]["function"]["arguments"])


# -- hostile values: a clear 400 in the error envelope

DEEP: dict[str, Any] = {"type": "string"}
for _ in range(60):
    DEEP = {"type": "array", "items": DEEP}


def schema(value: Any) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": value}}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (schema({"type": "strnig"}), "response_format"),
        (schema({"not": {"type": "string"}}), "response_format"),
        (schema({"type": "string", "pattern": "(?<=a)b"}), "response_format"),
        (schema(DEEP), "response_format"),
        (
            schema({"type": "object", "properties": {f"k{i}": {"description": "y" * 300} for i in range(300)}}),
            "response_format",
        ),
        (schema("not an object"), "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "regex", "regex": "a+"}}, "response_format"),
        ({"response_format": {"type": "json_object"}, "ignore_eos": True}, None),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "x",
                            "parameters": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}},
                        },
                    }
                ]
            },
            "tools",
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0"),
        ({"tools": [CLOCK], "tool_choice": {"type": "function", "function": {"name": "rm"}}}, None),
        ({"tool_choice": "required"}, None),
        ({"tools": [CLOCK], "parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"functions": [{"name": "f"}]}, None),
        ({"tools": [CLOCK] * 65}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "a\ud800"}}]}, None),
    ],
)
def test_hostile_values_are_a_clear_400(platform: Platform, extra: dict[str, Any], param: str | None) -> None:
    body = {"model": MODEL, "messages": WEATHER_ASK, "max_tokens": 8, **extra}
    raw = json.dumps(body)  # a lone surrogate goes out as JSON's \\ud800, as a hostile client sends it
    response = platform.client().post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    error = assert_envelope(response, 400)
    assert error["message"] and "Traceback" not in str(error["message"])
    if param is not None:
        assert str(error["param"]).startswith(param), error


def test_a_regex_bomb_is_generated_or_refused_never_stalls(platform: Platform) -> None:
    http = platform.client(timeout=120)
    for pattern in ("(a|aa)*(a|aa)*(a|aa)*c", "((x{50}){50}){50}"):
        body = {"model": MODEL, "messages": ASK, "max_tokens": 16, **schema({"type": "string", "pattern": pattern})}
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code in (200, 400), response.text
        if response.status_code == 400:
            assert_envelope(response, 400)


def test_a_completion_cannot_call_tools(platform: Platform) -> None:
    response = platform.client().post("/api/v1/inference/text", json={"model": MODEL, "prompt": "hi", "tools": [CLOCK]})
    assert "messages" in str(assert_envelope(response, 422)["message"])
