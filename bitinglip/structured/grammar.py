"""The grammar a constrained reply follows, built from `response_format` and `tools` for llguidance
(docs/architecture.md §3.18): a JSON Schema, or a Lark grammar whose tool calls embed each function's
parameters as `%json`. Torch-free: the gateway checks a grammar at the door (a bad schema is a 400 before
anything is queued) and the model worker compiles the same text against its tokenizer.

What bounds a hostile schema: its size and nesting are checked here first, then llguidance's own limits
(`LIMITS`: grammar size, lexer fuel and states, Earley items per step) bound compiling and every token's
mask; its regular expressions are matched by derivatives, without backtracking, so no regex bomb."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llguidance import LLMatcher, LLParserLimits

from bitinglip.errors import InvalidRequest
from bitinglip.structured.formats import JsonObjectFormat, JsonSchemaFormat, NamedToolChoice, ResponseFormat, Tool

MAX_SCHEMA_CHARS = 65536  # response_format's schema and all tools' parameters together, as JSON
MAX_SCHEMA_DEPTH = 32  # nesting of objects and arrays in any one schema
MAX_TOOLS = 64


def limits() -> LLParserLimits:
    """llguidance's bounds, tighter than its defaults (a request's grammar, not a program's)."""
    return LLParserLimits(
        max_grammar_size=100_000,
        initial_lexer_fuel=500_000,  # ~10 ms of building regexes
        step_lexer_fuel=200_000,  # ~15 ms per token mask at most
        step_max_items=50_000,
        max_lexer_states=50_000,
        verbose_errors=False,  # messages name the problem, not the parser's state
    )


# How a tool call is written (Hermes' format, as Qwen's and many templates ask for); the grammar fixes
# the key order and spacing, so a stream can tell the name before the arguments (bitinglip.structured.tools).
CALL_OPEN = '<tool_call>\n{"name": "'
CALL_ARGUMENTS = '", "arguments": '
CALL_CLOSE = "}\n</tool_call>"
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _depth(value: Any) -> int:
    """Nesting depth of JSON data, counted without recursion (a deep schema cannot blow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_SCHEMA_DEPTH:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


# How llguidance writes JSON: json.dumps' separators and no other whitespace, which a small model would
# otherwise fill with newlines until max_tokens. Set in the schema itself (a caller's own "x-guidance" is
# replaced), as `%json` inside a Lark grammar takes no options.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _checked_schema(schema: dict[str, Any], param: str) -> str:
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise InvalidRequest(f"{param}: the schema is nested deeper than {MAX_SCHEMA_DEPTH} levels", param=param)
    return json.dumps({**schema, "x-guidance": JSON_OPTIONS}, ensure_ascii=False, separators=(",", ":"))


def active_tools(tools: Sequence[Tool] | None, tool_choice: object) -> list[Tool]:
    """The tools the reply may call: none with `tool_choice: "none"`, the named one for a named choice."""
    if not tools or tool_choice == "none":
        return []
    if isinstance(tool_choice, NamedToolChoice):
        return [t for t in tools if t.function.name == tool_choice.function.name]
    return list(tools)


def _lark_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a Lark string literal


def build(response_format: ResponseFormat | None, tools: Sequence[Tool] | None, tool_choice: object) -> str | None:
    """The llguidance grammar for these fields, or None when the reply is free text; a 400 naming the
    field when a schema is too big, too deep, or refused by llguidance (an invalid schema, an
    unsupported keyword, a bad regex)."""
    calls = active_tools(tools, tool_choice)
    text_schema: str | None = None
    if isinstance(response_format, JsonSchemaFormat):
        text_schema = _checked_schema(response_format.json_schema.schema_, "response_format")
    elif isinstance(response_format, JsonObjectFormat):
        text_schema = _checked_schema({"type": "object"}, "response_format")
    parameters = [
        _checked_schema(t.function.parameters if t.function.parameters is not None else NO_PARAMETERS, "tools")
        for t in calls
    ]
    if len(text_schema or "") + sum(len(p) for p in parameters) > MAX_SCHEMA_CHARS:
        param = "tools" if calls else "response_format"
        raise InvalidRequest(f"{param}: schemas may take up to {MAX_SCHEMA_CHARS} characters of JSON", param=param)
    if text_schema is not None:
        _check(LLMatcher.grammar_from_json_schema(text_schema), "response_format")
    for t, p in zip(calls, parameters, strict=True):
        _check(LLMatcher.grammar_from_json_schema(p), f"tools: function {t.function.name!r}: parameters")
    if not calls:
        return None if text_schema is None else LLMatcher.grammar_from_json_schema(text_schema)
    rules = [
        f"call_{i}: {_lark_string(CALL_OPEN + t.function.name + CALL_ARGUMENTS)} args_{i} {_lark_string(CALL_CLOSE)}\n"
        f"args_{i}: %json {p}"
        for i, (t, p) in enumerate(zip(calls, parameters, strict=True))
    ]
    call = "call: " + " | ".join(f"call_{i}" for i in range(len(calls)))
    if tool_choice == "required" or isinstance(tool_choice, NamedToolChoice):
        start = "start: call"
    elif text_schema is not None:  # auto: the formatted reply or a call
        start = f"start: reply | call\nreply: %json {text_schema}"
    else:  # auto: free text or a call; free text cannot start with "<", so its first character decides
        start = "start: TEXT | call\nTEXT: /[^<][\\s\\S]*/"
    grammar = LLMatcher.grammar_from_lark("\n".join([start, call, *rules]))
    _check(grammar, "tools")
    return grammar


def _check(grammar: str, where: str) -> None:
    try:
        error = LLMatcher.validate_grammar(grammar, None, limits=limits())
    except (ValueError, RuntimeError) as exc:  # a grammar it could not even read
        error = str(exc) or "invalid grammar"
    if error:
        message = " ".join(error.split())[:500]  # regex errors come on several lines
        raise InvalidRequest(f"{where}: {message}", param=where.split(":")[0])
