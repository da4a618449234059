"""The wording of validation failures, from real validations of the request models (no HTTP): the
paths name fields, never pydantic's union labels, with or without the body they came from."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from api.jobs.schemas import JobRequest
from bitinglip.schemas import TextGenerationParams
from bitinglip.serving.protocol import ChatCompletionRequest
from bitinglip.validation_errors import describe, quoted, validation_message


def errors_of(model: Any, body: Any) -> list[Any]:
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(model).validate_python(body)
    return list(caught.value.errors())


def test_union_labels_are_no_fields_with_or_without_the_body() -> None:
    body = {"messages": [{"role": "user", "content": {"nested": True}}]}
    errors = errors_of(TextGenerationParams, body)
    assert {str(p) for e in errors for p in e["loc"]} >= {"str", "list[dict[str,any]]"}  # what pydantic says
    with_body = validation_message(errors, body)
    without = validation_message(errors)  # the serving layer validates kwargs it built itself
    expected = ("`messages[0].content` should be a valid string or a valid list.", "messages.0.content")
    assert with_body == without == expected


def test_a_tagged_unions_tag_is_no_field() -> None:
    body = {"type": "embedding", "params": {"input": 5}}
    message, param = validation_message(errors_of(JobRequest, body), body)
    assert param == "params.input" and message.startswith("`params.input` should be a valid string or a valid list")
    assert "embedding" not in message.split("(got")[0].replace("`params.input`", "")


def test_json_syntax_errors_give_line_column_and_the_text_there() -> None:
    document = '{\n  "a": 1,\n  "b": \x01tab`\n}'
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads(document)
    error = {"type": "json_invalid", "loc": ("body", caught.value.pos), "ctx": {"error": caught.value.msg}}
    message, param, code = describe([error], document)
    assert code == "invalid_json" and param is None
    assert message == (
        'The request body is not valid JSON: expecting value at line 3, column 8 near `  "b": \\u0001tab\\u0060`.'
    )


def test_our_own_checks_keep_their_words() -> None:
    errors = errors_of(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0})
    message, param = validation_message(errors)
    assert param == "n" and message == "`n` should be greater than or equal to 1 (got 0)."
    errors = errors_of(TextGenerationParams, {})
    assert validation_message(errors) == ("Give exactly one of `prompt` or `messages`.", None)


def test_quoted_text_is_short_and_plain() -> None:
    assert quoted("a\nb`c") == "a\\u000ab\\u0060c"
    assert quoted("x" * 500) == "x" * 97 + "..."


def test_a_missing_field_under_a_tagged_union_is_named() -> None:
    body = {"type": "text"}
    message, param, code = describe(errors_of(JobRequest, body), body)
    assert (message, param, code) == ("`params` is required.", "params", "invalid_parameter")
