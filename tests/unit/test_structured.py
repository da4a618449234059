"""Structured output and tool calling without a model: the grammars llguidance gets (and what it must
refuse, as a 400 naming the field), how tools reach a template, and how a reply is read back, whole
or streamed. Engines and the API are tested on SmolLM2 in tests/test_structured*.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper
from pydantic import ValidationError

from bitinglip.errors import InvalidRequest
from bitinglip.schemas import TextGenerationParams
from bitinglip.structured import grammar
from bitinglip.structured.tools import CallStream, parse_call, template_inputs, template_takes_tools

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def params(**fields: Any) -> TextGenerationParams:
    return TextGenerationParams(messages=USER, **fields)  # type: ignore[arg-type]


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


class _Bytes:
    """A tokenizer of one token per byte (and an end token): llguidance walks a grammar byte by byte."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<end>"]
    special_token_ids = [256]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


BYTES = LLTokenizer(TokenizerWrapper(_Bytes()))


def accepts(grammar_text: str, reply: str) -> bool:
    """Whether a complete reply follows the grammar (each byte allowed, and the end allowed after it)."""
    matcher = LLMatcher(BYTES, grammar_text, limits=grammar.limits())
    return all(matcher.consume_token(b) for b in reply.encode()) and matcher.is_accepting()


# -- grammars


def test_free_text_has_no_grammar() -> None:
    assert params().grammar() is None
    assert params(response_format={"type": "text"}).grammar() is None
    assert params(tools=[WEATHER], tool_choice="none").grammar() is None


def test_a_schema_is_enforced_with_fixed_separators() -> None:
    g = params(response_format=schema_format(WEATHER["function"]["parameters"])).grammar()  # type: ignore[index]
    assert g is not None
    assert accepts(g, '{"city": "Paris", "unit": "c"}')
    assert not accepts(g, '{"city": "Paris"}')  # a required key is missing
    assert not accepts(g, '{"city": "Paris", "unit": "k"}')  # not in the enum
    assert not accepts(g, '{\n"city": "Paris", "unit": "c"}')  # whitespace a small model would loop on


def test_json_object_is_any_object() -> None:
    g = params(response_format={"type": "json_object"}).grammar()
    assert g is not None and accepts(g, '{"a": [1, 2], "b": {"c": null}}') and not accepts(g, "[1]")


@pytest.mark.parametrize(
    ("choice", "free_text", "weather", "clock"),
    [
        ("auto", True, True, True),
        (None, True, True, True),
        ("required", False, True, True),
        ({"type": "function", "function": {"name": "get_time"}}, False, False, True),
    ],
)
def test_tool_choice_decides_what_the_reply_may_be(choice: Any, free_text: bool, weather: bool, clock: bool) -> None:
    g = params(tools=[WEATHER, CLOCK], tool_choice=choice).grammar()
    assert g is not None
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
    assert accepts(g, "It is sunny.") is free_text
    assert accepts(g, call) is weather
    assert accepts(g, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>') is clock
    assert not accepts(g, call.replace('"c"', '"kelvin"'))  # arguments follow the parameters schema
    assert not accepts(g, '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>')
    assert not accepts(g, "<b>bold</b>")  # free text never starts like a call


def test_auto_with_a_response_format_is_that_format_or_a_call() -> None:
    g = params(tools=[CLOCK], response_format={"type": "json_object"}).grammar()
    assert g is not None
    assert accepts(g, '{"answer": 42}') and not accepts(g, "free text")
    assert accepts(g, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


# -- hostile values: a 400 naming the field, never a hang or a 500

DEEP: dict[str, Any] = {"type": "string"}
for _ in range(100):
    DEEP = {"type": "object", "properties": {"a": DEEP}}

HOSTILE_SCHEMAS = [
    pytest.param({"type": "strnig"}, "Invalid type", id="invalid-type"),
    pytest.param({"$ref": "#/definitions/missing"}, "does not exist", id="dangling-ref"),
    pytest.param({"not": {"type": "string"}}, "not", id="unsupported-keyword"),
    pytest.param({"type": "string", "format": "colour"}, "format", id="unknown-format"),
    pytest.param({"type": "string", "pattern": "(?=a)b"}, "look-around", id="lookahead"),
    pytest.param({"type": "string", "pattern": "(a"}, "regex", id="unclosed-group"),
    pytest.param(DEEP, "nested deeper", id="deep"),
    pytest.param(
        {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 200} for i in range(400)}},
        "characters",
        id="enormous",
    ),
]


@pytest.mark.parametrize(("schema", "said"), HOSTILE_SCHEMAS)
def test_hostile_schemas_are_refused_with_the_reason(schema: Any, said: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        params(response_format=schema_format(schema)).check_limits(_settings())
    assert said in refused.value.message and refused.value.param == "response_format"
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    with pytest.raises(InvalidRequest) as refused:
        params(tools=[tool]).grammar()
    assert said in refused.value.message and refused.value.param == "tools"


@pytest.mark.parametrize(
    "pattern", ["(a|a)*(a|a)*(a|a)*b", "(x+x+)+y", "((a{100}){100}){100}", "[a-z]{1,1000}[0-9]{1,1000}z{5000}"]
)
def test_regex_bombs_compile_and_mask_within_the_limits(pattern: str) -> None:
    """Patterns that make a backtracking engine explode: llguidance matches by derivatives within fuel
    limits, so a request either compiles, or is refused; it never stalls the worker."""
    try:
        g = params(response_format=schema_format({"type": "string", "pattern": pattern})).grammar()
    except InvalidRequest:
        return
    assert g is not None
    matcher = LLMatcher(BYTES, g, limits=grammar.limits())
    for byte in b'"aaaaaaaaaaaaaaaaaaaa':
        matcher.compute_bitmask()
        if matcher.is_error() or not matcher.consume_token(byte):
            break


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"tools": [{"type": "code_interpreter"}]}, "function"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "pattern"),
        ({"tools": [CLOCK, CLOCK]}, "unique"),
        ({"tools": [CLOCK] * 65}, "at most 64"),
        ({"tool_choice": "required"}, "no tools"),
        ({"tools": [CLOCK], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "no tool is named"),
        ({"tools": [CLOCK], "tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "shema": 1}}}, "extra"),
        ({"response_format": {"type": "yaml"}}, "json_object"),
        ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos"),
        ({"tools": [CLOCK], "min_tokens": 3}, "min_tokens"),
    ],
)
def test_hostile_fields_are_validation_errors(fields: dict[str, Any], said: str) -> None:
    with pytest.raises(ValidationError) as refused:
        params(**fields)
    assert said in str(refused.value)


def test_tools_need_messages() -> None:
    with pytest.raises(ValidationError, match="messages"):
        TextGenerationParams(prompt="hi", tools=[CLOCK])  # type: ignore[list-item]


def _settings() -> Any:
    from bitinglip.config import Settings

    return Settings()


# -- tools in a template, and replies read back

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
HISTORY = [
    {"role": "system", "content": "Be brief."},
    *USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
]


def test_a_template_without_tools_gets_them_in_the_system_message() -> None:
    p = TextGenerationParams(messages=HISTORY, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    turns, definitions = template_inputs(p.template_messages() or [], p.template_tools(), takes_tools=False)
    assert definitions is None
    assert turns[0]["role"] == "system" and turns[0]["content"].startswith("Be brief.\n\n# Tools")
    assert json.dumps(WEATHER["function"]) in turns[0]["content"]
    assert turns[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    }
    assert turns[3] == {"role": "user", "content": '<tool_response>\n{"celsius": 21}\n</tool_response>'}


def test_a_template_with_tools_renders_them_itself() -> None:
    source = "{% for t in tools or [] %}{{ t.function.name }}{% endfor %}{{ messages | length }}"
    assert template_takes_tools(source) and not template_takes_tools("{{ messages }}")
    p = TextGenerationParams(messages=HISTORY, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    turns, definitions = template_inputs(p.template_messages() or [], p.template_tools(), takes_tools=True)
    assert definitions == [WEATHER]
    assert turns[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # a mapping, as templates expect
    assert turns[3] == {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "call_1"}


def test_a_complete_call_is_read_back_and_a_cut_one_is_not() -> None:
    call = parse_call(CALL)
    assert call is not None and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "c"}
    assert parse_call(CALL[:-5]) is None and parse_call("It is sunny.") is None


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_a_streamed_call_gives_its_name_first_then_argument_fragments(size: int) -> None:
    stream = CallStream()
    deltas = [d for i in range(0, len(CALL), size) for d in stream.feed(CALL[i : i + size])] + stream.finish()
    calls = [c for d in deltas for c in d["tool_calls"]]
    assert not [d for d in deltas if "content" in d]
    assert calls[0] == {
        "index": 0,
        "id": stream.call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(c["index"] == 0 and set(c) == {"index", "function"} for c in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris", "unit": "c"}'


def test_streamed_free_text_is_content_and_a_cut_call_keeps_what_it_had() -> None:
    stream = CallStream()
    text = [d["content"] for piece in ("It is ", "sunny.") for d in stream.feed(piece)]
    assert "".join(text) == "It is sunny." and stream.finish() == []
    cut = CallStream()
    deltas = cut.feed(CALL[:60]) + cut.finish()
    header = CALL.index("{", CALL.index("arguments"))
    assert "".join(c["function"].get("arguments", "") for d in deltas for c in d["tool_calls"]) == CALL[header:60]
    unnamed = CallStream()
    assert unnamed.feed("<tool_c") == [] and unnamed.finish() == [{"content": "<tool_c"}]
