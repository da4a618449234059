"""Validation failures as sentences a newcomer can act on: which field (as a path into the JSON they
sent, `messages[0].role`), what is wrong with it, and what they sent, never pydantic's internals (union
member labels such as `list[dict[str,any]]`, class or function names). One home for the wording, used
by the gateway's and the worker's error handlers, the OpenAI serving layer and batch-line checks."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

_NO_BODY = object()
_UNKNOWN = object()  # the input below a part of the path that the body does not have
# Labels pydantic puts into `loc` for the member of a union that failed: `str`, `list[dict[str,any]]`,
# `function-after[...]`, a model's class name (`ChatMessage`). Our fields are snake_case.
_TYPE_LABEL = re.compile(r"^[A-Z][A-Za-z0-9]*$|[\[\]()]|^(str|int|float|bool|bytes|none|list|dict|tuple|set)$")
_LEADS = ("Input should", "String should", "List should", "Value should", "Dictionary should", "Tuple should")
_OBJECT_TYPES = {"model_type", "model_attributes_type", "dataclass_type", "dict_type", "is_instance_of"}
_LOCATIONS = {"query": "query parameter", "path": "path parameter", "header": "header", "cookie": "cookie"}
MAX_SENTENCES = 3
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
_AS_JSON = "as JSON, with `Content-Type: application/json`"
MAX_ECHO = 40


def describe(
    errors: Sequence[Any], body: Any = _NO_BODY, content_type: str | None = None
) -> tuple[str, str | None, str]:
    """(message, param, code) for pydantic/FastAPI validation errors. The code tells a body that is
    not a JSON object (`invalid_json`, `unsupported_media_type`, `invalid_body`) from invalid fields
    (`invalid_parameter`). `body`: the parsed JSON the errors are about, when known (it tells field
    names from union labels); `content_type`: the request's header, which explains a body that never
    became JSON."""
    if not errors:
        return "The request is invalid.", None, "invalid_parameter"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return _json_syntax(first, body), None, "invalid_json"
    at_root = _path(list(first.get("loc", ())), body, first.get("type") == "missing") == ("", None)
    if at_root and first.get("type") in ("missing", *_OBJECT_TYPES) and first.get("loc", ())[:1] == ("body",):
        return _whole_body(first, content_type)
    grouped: dict[str, list[str]] = {}
    params: dict[str, str | None] = {}
    for error in errors:
        loc = list(error.get("loc", ()))
        named = re.fullmatch(r"'(\w+)'", str((error.get("ctx") or {}).get("discriminator", "")))
        if error.get("type") in ("union_tag_invalid", "union_tag_not_found") and named:
            loc.append(named.group(1))  # the field that picks the kind (a tagged union's `type`)
        path, param = _path(loc, body, error.get("type") in ("missing", "union_tag_not_found"))
        grouped.setdefault(path, []).append(_problem(error))
        params.setdefault(path, param)
    sentences = [_sentence(path, problems) for path, problems in grouped.items()]
    message = " ".join(sentences[:MAX_SENTENCES])
    if len(sentences) > MAX_SENTENCES:
        message += f" ({len(sentences) - MAX_SENTENCES} more problems not shown.)"
    return message, next(iter(params.values())), "invalid_parameter"


def validation_message(errors: Sequence[Any], body: Any = _NO_BODY) -> tuple[str, str | None]:
    """(message, param): `describe` for callers that validate a model themselves."""
    message, param, _ = describe(errors, body)
    return message, param


def _json_syntax(error: dict[str, Any], document: Any) -> str:
    """Where the JSON broke, as line and column, with the text around it."""
    reason = str((error.get("ctx") or {}).get("error") or "invalid JSON")
    loc = error.get("loc", ())
    position = loc[-1] if loc and isinstance(loc[-1], int) else None
    if not isinstance(document, str) or position is None:
        return f"The request body is not valid JSON: {reason[:1].lower()}{reason[1:]}."
    line = document.count("\n", 0, position) + 1
    column = position - (document.rfind("\n", 0, position) + 1) + 1
    start = document.rfind("\n", 0, position) + 1
    near = document[max(start, position - 30) : position + 10].split("\n")[0]
    where = f"line {line}, column {column}"
    snippet = f" near `{_printable(near)}`" if near.strip() else ""
    return f"The request body is not valid JSON: {reason[:1].lower()}{reason[1:]} at {where}{snippet}."


def _whole_body(error: dict[str, Any], content_type: str | None) -> tuple[str, None, str]:
    """The body as a whole: absent, not JSON at all (its Content-Type said otherwise), or not an object."""
    if error.get("type") == "missing":
        return (
            "The request has no body: send a JSON object, with `Content-Type: application/json`.",
            None,
            "invalid_body",
        )
    received = error.get("input")
    if isinstance(received, bytes | bytearray):  # never parsed: the Content-Type was not JSON
        if not content_type:
            return f"The request has no Content-Type header: send the body {_AS_JSON}.", None, UNSUPPORTED_MEDIA_TYPE
        sent = f"The request body was sent as `{_printable(_short(content_type))}`"
        return f"{sent}: send it {_AS_JSON}.", None, UNSUPPORTED_MEDIA_TYPE
    return f"The request body must be a JSON object, not {_json_kind(received)}.", None, "invalid_body"


def _path(loc: list[Any], body: Any, missing: bool) -> tuple[str, str | None]:
    """The readable path (`messages[0].role`) and the `param` (`messages.0.role`) of an error's
    location, without the labels pydantic adds for union members."""
    where = ""
    if loc and loc[0] in ("body", *_LOCATIONS):
        where = _LOCATIONS.get(loc[0], "")
        body = body if loc[0] == "body" else _NO_BODY
        loc = loc[1:]
    node = _UNKNOWN if body is _NO_BODY or body is None else body
    parts: list[str | int] = []
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(part, int):
            parts.append(part)
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else _UNKNOWN
        elif isinstance(node, dict):
            if part in node:
                parts.append(part)
                node = node[part]
            elif last and missing:
                parts.append(part)
                node = _UNKNOWN
            # else: the label of a union member (a tagged union's tag, a class name): not a field
        elif node is _UNKNOWN and not _TYPE_LABEL.search(str(part)):
            parts.append(part)
        # else: a label under a value that is no object (`str` under `content: 5`), or a type label
    readable = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    param = ".".join(str(p) for p in parts) or None
    if where:
        return f"{where} `{readable}`", param
    return (f"`{readable}`" if readable else ""), param


def _problem(error: dict[str, Any]) -> str:
    """What is wrong, worded to follow the field's name ("should be a valid integer (got "abc")")."""
    kind = str(error.get("type", ""))
    message = str(error.get("msg", "is invalid"))
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a field of this request"
    if kind in _OBJECT_TYPES:
        return f"should be a JSON object, not {_json_kind(error.get('input'))}"
    if kind == "union_tag_invalid":
        return f"should be one of {ctx.get('expected_tags', '')} (got {_echo(ctx.get('tag'))})"
    if kind == "union_tag_not_found":
        return "is required: it says which kind of object this is"
    if kind in ("value_error", "assertion_error"):
        message = message.split(", ", 1)[1] if ", " in message else message  # "Value error, ..."
        return f": {message}"
    for lead in _LEADS:
        if message.startswith(lead):
            message = "should" + message[len(lead) :]
            break
    else:
        message = f": {message[:1].lower()}{message[1:]}"
    if "input" in error and not isinstance(error["input"], dict | list | bytes):
        message += f" (got {_echo(error['input'])})"
    return message


def _sentence(path: str, problems: list[str]) -> str:
    """One sentence per field; alternatives of a union read as "should be a valid string or a valid list"."""
    got = re.search(r" \(got .*\)$", problems[0])
    bare = [re.sub(r" \(got .*\)$", "", p) for p in problems]
    if len(bare) > 1 and all(p.startswith("should be ") for p in bare):
        alternatives = dict.fromkeys(p.removeprefix("should be ") for p in bare)
        text = "should be " + " or ".join(alternatives) + (got.group(0) if got else "")
    else:
        text = problems[0]
    if not path:
        text = text.removeprefix(": ")
        return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
    sentence = f"{path}{text}" if text.startswith(":") else f"{path} {text}"
    return sentence[:1].upper() + sentence[1:] + ("" if sentence.endswith(".") else ".")


def _echo(value: Any) -> str:
    """What the caller sent, as JSON, cut short: enough to recognise, never a wall of their data."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = json.dumps(str(value))
    return _short(text)


def _short(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 3] + "..."


def quoted(text: str, limit: int = 100) -> str:
    """Text the caller sent, for a message: cut short, control characters and backticks escaped, so
    it can neither flood the reply nor break its quoting."""
    return _printable(text if len(text) <= limit else text[: limit - 3] + "...")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() and c != "`" else f"\\u{ord(c):04x}" for c in text)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return "that"
