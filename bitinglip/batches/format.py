"""The OpenAI Batch file format: one request per input line, one outcome per output/error line.

Every input line ends up in exactly one place: a valid request in a chunk (and later in the output or
error file), an invalid one in the error file at once, with its line number and reason."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ENDPOINTS = {  # url -> the task of the model it needs
    "/v1/chat/completions": "text",
    "/v1/completions": "text",
    "/v1/embeddings": "embedding",
}
FORMAT_VERSION = "1"  # part of every chunk's cache key: bump when the output lines change shape

BodyCheck = Callable[[str, dict[str, Any]], str | None]  # (url, body) -> reason it is invalid, or None


@dataclass(frozen=True)
class BatchItem:
    line: int
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))


@dataclass
class ParsedInput:
    items: list[BatchItem] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.items) + len(self.errors)


def _request_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def output_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": _request_id(),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": body},
        "error": None,
    }


def error_line(
    custom_id: str | None,
    code: str,
    message: str,
    *,
    status_code: int | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A request that failed: before running (no response) or while running (the error response)."""
    response = (
        None if status_code is None else {"status_code": status_code, "request_id": uuid.uuid4().hex, "body": body}
    )
    return {
        "id": _request_id(),
        "custom_id": custom_id,
        "response": response,
        "error": {"code": code, "message": message},
    }


def parse_input(data: bytes, endpoint: str | None, check_body: BodyCheck) -> ParsedInput:
    """Validates every line first. `endpoint` (the batch's) must match each line's `url` when given."""
    parsed = ParsedInput()
    seen: set[str] = set()
    text = data.decode("utf-8", errors="replace")
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        custom_id, reason = None, None
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as exc:
            parsed.errors.append(error_line(None, "invalid_json", f"line {number}: not valid JSON ({exc.msg})"))
            continue
        if isinstance(entry, dict) and isinstance(entry.get("custom_id"), str) and entry["custom_id"]:
            custom_id = entry["custom_id"]
        reason = _line_problem(entry, custom_id, seen, endpoint, check_body)
        if reason is not None:
            parsed.errors.append(error_line(custom_id, reason[0], f"line {number}: {reason[1]}"))
            continue
        assert custom_id is not None
        seen.add(custom_id)
        parsed.items.append(BatchItem(number, custom_id, entry["url"], entry["body"]))
    return parsed


def _line_problem(
    entry: Any, custom_id: str | None, seen: set[str], endpoint: str | None, check_body: BodyCheck
) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return "invalid_request", "a line must be a JSON object"
    if custom_id is None:
        return "missing_custom_id", "custom_id must be a non-empty string"
    if len(custom_id) > 512:
        return "invalid_custom_id", "custom_id is longer than 512 characters"
    if custom_id in seen:
        return "duplicate_custom_id", f"custom_id {custom_id!r} appears more than once"
    if entry.get("method", "POST") != "POST":
        return "invalid_method", "method must be POST"
    url = entry.get("url")
    if url not in ENDPOINTS:
        return "invalid_url", f"url {url!r} is not one of {', '.join(ENDPOINTS)}"
    if endpoint is not None and url != endpoint:
        return "mismatched_url", f"url {url!r} differs from the batch endpoint {endpoint!r}"
    body = entry.get("body")
    if not isinstance(body, dict):
        return "invalid_body", "body must be a JSON object"
    if body.get("stream"):
        return "invalid_body", "stream is not supported in batches"
    problem = check_body(url, body)
    return None if problem is None else ("invalid_body", problem)


def chunks(items: list[BatchItem], size: int) -> list[list[BatchItem]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def chunk_key(items: list[BatchItem], model_ids: dict[str, str]) -> str:
    """Content + resolved model revisions + format version: the same requests against the same
    weights produce the same key, so retried, resumed or re-submitted batches reuse the chunk."""
    digest = hashlib.sha256(FORMAT_VERSION.encode())
    for item in items:
        record = [item.custom_id, item.url, model_ids.get(item.model, item.model), item.body]
        digest.update(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def to_jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


def from_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def count_lines(data: bytes) -> int:
    return sum(1 for line in data.splitlines() if line.strip())
