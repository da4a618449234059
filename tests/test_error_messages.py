"""Error messages a newcomer can act on, from the running gateway: malformed JSON says where, a body
sent as something else than JSON says so, invalid fields are sentences naming the field's path, and
no message names our code's functions or classes. Hostile bodies go over a raw socket (bytes no client
library would send) and httpx, on native, OpenAI, job and admin routes: every reply is the one error
envelope with the right status."""

from __future__ import annotations

import json
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import TEXT_MODEL
from tests.platform_harness import Platform
from tests.security.conftest import envelope

# Several routes of each family: native inference, OpenAI, async jobs, users (admin), model downloads.
ROUTES = [
    "/api/v1/inference/text",
    "/api/v1/inference/embeddings",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/api/v1/tasks",
    "/api/v1/users",
    "/api/v1/models/download",
]
# What no message may show: pydantic's union labels, our function and class names, Python's reprs.
INTERNALS = re.compile(
    r"_job_type|\(\)|list\[dict|ChatMessage|TextGenerationParams|Request\b|[A-Z][a-z]+[A-Z]\w*Error|Traceback"
    r"|b'|Value error|JSON decode error|Field required|Input should"
)


def raw_post(platform: Platform, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One POST written by hand on a socket: exactly these bytes and headers, nothing added."""
    url = urlsplit(platform.gateway)
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in {**platform.auth, **headers}.items()]
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(payload)


def checked(status: int, body: dict[str, Any], expected: int, code: str) -> str:
    """The envelope, its status and code; returns the message after checking it shows no internals."""
    assert status == expected, (status, body)
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
    assert error["code"] == code, error
    message = str(error["message"])
    assert not INTERNALS.search(message), message
    return message


@pytest.mark.parametrize("path", ROUTES)
def test_malformed_json_says_where_and_what(platform: Platform, path: str) -> None:
    body = b'{\n  "model": "x",\n  "max_tokens": 15,\n}'  # a trailing comma, the classic
    status, reply = raw_post(platform, path, body, {"Content-Type": "application/json"})
    message = checked(status, reply, 400, "invalid_json")
    assert "not valid JSON" in message and "line 4, column 1" in message, message
    assert "double quotes" in message and reply["error"]["param"] is None  # never `param: "15"`


@pytest.mark.parametrize("path", ROUTES)
def test_a_body_not_sent_as_json_is_a_415_that_says_so(platform: Platform, path: str) -> None:
    body = json.dumps({"prompt": "hi", "input": "hi"}).encode()
    status, reply = raw_post(platform, path, body, {})  # no Content-Type at all
    assert "no Content-Type header" in checked(status, reply, 415, "unsupported_media_type")
    # curl -d without -H sends a form: the message names what was sent and what to send
    status, reply = raw_post(platform, path, b"prompt=hi", {"Content-Type": "application/x-www-form-urlencoded"})
    message = checked(status, reply, 415, "unsupported_media_type")
    assert "`application/x-www-form-urlencoded`" in message and "Content-Type: application/json" in message
    hostile = "text/plain; x=`a`" + "y" * 500  # backticks and bulk are not echoed as sent
    status, reply = raw_post(platform, path, b"{}", {"Content-Type": hostile})
    message = checked(status, reply, 415, "unsupported_media_type")
    assert "y" * 100 not in message and "x=\\u0060a\\u0060y" in message, message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "The request has no body"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b'"hello"', "must be a JSON object, not a string"),
        (b'{"prompt": "\xff\xfe"}', "send UTF-8 encoded JSON"),
    ],
)
def test_bodies_that_are_no_json_object(platform: Platform, body: bytes, message: str) -> None:
    for path in ROUTES:
        status, reply = raw_post(platform, path, body, {"Content-Type": "application/json"})
        assert message in checked(status, reply, 400, "invalid_body"), reply


def test_invalid_fields_are_sentences_naming_the_path(platform: Platform) -> None:
    client = platform.client()
    cases: list[tuple[str, dict[str, Any], int, str, str]] = [  # path, body, status, param, message
        (
            "/api/v1/inference/text",
            {"messages": [{"role": "bot", "content": "hi"}]},
            422,
            "messages.0.role",
            "`messages[0].role` should be 'system', 'user', 'assistant', 'tool' or 'developer' (got \"bot\").",
        ),
        (
            "/api/v1/inference/text",
            {"messages": [{"role": "user", "content": 5}]},
            422,
            "messages.0.content",
            "`messages[0].content` should be a valid string or a valid list (got 5).",
        ),
        (
            "/v1/chat/completions",
            {"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi"}], "n": "15x"},
            400,
            "n",
            '`n` should be a valid integer, unable to parse string as an integer (got "15x").',
        ),
        (
            "/api/v1/tasks",
            {"type": "text", "params": {"prompt": "hi", "max_tokens": 0}},
            422,
            "params.max_tokens",
            "`params.max_tokens` should be greater than or equal to 1 (got 0).",
        ),
        (
            "/api/v1/tasks",
            {"type": "poem", "params": {}},
            422,
            None,
            "`type` should be 'text', 'embedding' or 'image'.",
        ),
        ("/api/v1/tasks", {"type": "text"}, 422, "params", "`params` is required."),
        (
            "/api/v1/inference/text",
            {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
            422,
            None,
            "Give exactly one of `prompt` or `messages`.",
        ),
        ("/v1/embeddings", {"input": "hi"}, 400, "model", "`model` is required."),
    ]
    for path, body, status, param, message in cases:
        error = envelope(client.post(path, json=body), status, "invalid_request_error")
        assert error["message"] == message and error["param"] == param, (path, error)
        assert not INTERNALS.search(str(error["message"])), error
    listed = client.get("/api/v1/tasks", params={"limit": "many"})
    error = envelope(listed, 422)
    assert error["param"] == "limit"
    assert error["message"].startswith("Query parameter `limit` should be a valid integer"), error


def test_hostile_values_are_cut_short_in_messages(platform: Platform) -> None:
    flood = "x" * 50_000
    error = envelope(platform.client().post("/api/v1/inference/text", json={"prompt": "hi", "max_tokens": flood}), 422)
    assert flood[:100] not in error["message"] and len(error["message"]) < 300, error
    many = {"prompt": "hi", "max_tokens": 0, "temperature": 9, "top_p": 0, "seed": -1, "logprobs": 99}
    error = envelope(platform.client().post("/api/v1/inference/text", json=many), 422)
    assert error["message"].count("should be") == 3 and "(2 more problems not shown.)" in error["message"], error


def test_unknown_routes_and_methods_say_what_exists(platform: Platform) -> None:
    with platform.client() as client:
        missing = envelope(client.get("/api/v1/nothing-here"), 404, "not_found_error")
        assert missing["message"] == "There is no route `/api/v1/nothing-here`; the API's routes are listed at /docs."
        wrong = envelope(client.put("/v1/chat/completions", json={}), 405, "invalid_request_error")
        assert wrong["message"] == "PUT is not allowed on `/v1/chat/completions`; use POST." and wrong["code"]
    with httpx.Client(base_url=platform.gateway) as anonymous:  # no route is no route, with or without a key
        assert envelope(anonymous.get("/v1/nope"), 404)["code"] == "not_found"
