"""Requests that once got a 500 from the running platform get a 4xx with a clear message: lone UTF-16
surrogates anywhere in the text (messages, content parts, extra fields, `stop`, embedding input, job
params, batch lines), a seed too close to 2^63 for its `n` choices, a result *directory* under
/api/v1/files, an oversized chunked body. Async embedding jobs are refused at acceptance exactly as the
sync route refuses them, and a batch that fails unexpectedly records no internal exception text."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bitinglip.errors import INTERNAL_ERROR_MESSAGE
from bitinglip.schemas import MAX_SEED
from tests.conftest import EMBEDDING_MODEL, TEXT_MODEL, S3Server
from tests.platform_harness import Platform
from tests.security.conftest import envelope

HI = [{"role": "user", "content": "hi"}]


LONE = "@LONE@"  # where the lone surrogate goes


def _raw(body: dict[str, Any], escape: str = "\\ud800") -> bytes:
    """JSON as a hostile client writes it: the `\\ud800` escape parses into a lone surrogate."""
    return json.dumps(body).replace(LONE, escape).encode()


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": TEXT_MODEL, "max_tokens": 1, "messages": HI, **fields}


SURROGATES: list[tuple[str, str, bytes, int]] = [  # (case, path, raw JSON body, status)
    ("chat content", "/v1/chat/completions", _raw(_chat(messages=[{"role": "user", "content": f"a{LONE}"}])), 400),
    (
        "chat content part",
        "/v1/chat/completions",
        _raw(_chat(messages=[{"role": "user", "content": [{"type": "text", "text": LONE}]}]), "\\udfff"),
        400,
    ),
    (
        "chat message extra field",
        "/v1/chat/completions",
        _raw(_chat(messages=[{"role": "user", "content": "hi", "name": LONE}])),
        400,
    ),
    ("chat stop", "/v1/chat/completions", _raw(_chat(stop=LONE), "\\udc00"), 400),
    ("completion prompt", "/v1/completions", _raw({"model": TEXT_MODEL, "max_tokens": 1, "prompt": LONE}), 400),
    ("embedding input", "/v1/embeddings", _raw({"model": EMBEDDING_MODEL, "input": LONE}), 400),
    ("embedding input list", "/v1/embeddings", _raw({"model": EMBEDDING_MODEL, "input": ["ok", LONE]}), 400),
    ("rest embedding", "/api/v1/inference/embeddings", _raw({"input": LONE}), 422),
    ("rest text stop", "/api/v1/inference/text", _raw({"prompt": "hi", "max_tokens": 1, "stop": [LONE]}), 422),
    ("embedding job", "/api/v1/tasks", _raw({"type": "embedding", "params": {"input": [LONE]}}), 422),
    (
        "text job message",
        "/api/v1/tasks",
        _raw({"type": "text", "params": {"max_tokens": 1, "messages": [{"role": "user", "content": LONE}]}}),
        422,
    ),
]


@pytest.mark.parametrize(("case", "path", "body", "status"), SURROGATES, ids=[c[0] for c in SURROGATES])
def test_lone_surrogates_are_refused_not_500(
    platform: Platform, case: str, path: str, body: bytes, status: int
) -> None:
    with platform.client() as client:
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        error = envelope(response, status, "invalid_request_error")
        assert "lone UTF-16 surrogate" in error["message"] and "valid Unicode" in error["message"], error
        assert "\ud800" not in error["message"] and "\udc00" not in error["message"]  # named, never echoed
        assert client.get("/health").status_code == 200


def test_seed_near_the_top_with_several_choices_is_a_400(platform: Platform) -> None:
    """Choice i samples with seed + i: a seed that leaves no room for n choices is refused up front."""
    with platform.client() as client:
        chat = {"model": TEXT_MODEL, "messages": HI, "max_tokens": 1, "n": 2, "seed": MAX_SEED}
        error = envelope(client.post("/v1/chat/completions", json=chat), 400, "invalid_request_error")
        assert error["param"] == "seed" and str(MAX_SEED - 1) in error["message"] and "n=2" in error["message"]
        completion = {"model": TEXT_MODEL, "prompt": "hi", "max_tokens": 1, "n": 3, "seed": MAX_SEED - 1}
        error = envelope(client.post("/v1/completions", json=completion), 400, "invalid_request_error")
        assert error["param"] == "seed" and str(MAX_SEED - 2) in error["message"]
        fits = client.post("/v1/chat/completions", json={**chat, "seed": MAX_SEED - 1})  # the last one that fits
        assert fits.status_code == 200, fits.text
        assert len(fits.json()["choices"]) == 2


def test_oversized_chunked_body_is_413(platform: Platform) -> None:
    """No Content-Length: the limit is found while reading, and the answer is still 413, not 400."""
    limit = platform.settings.max_request_bytes

    def chunks() -> Iterator[bytes]:
        yield b'{"model":"' + TEXT_MODEL.encode() + b'","messages":[{"role":"user","content":"'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    with platform.client() as client:
        response = client.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
        assert "content-length" not in response.request.headers
        error = envelope(response, 413, "invalid_request_error")
        assert error["code"] == "too_large" and str(limit) in error["message"]
        declared = client.post("/v1/chat/completions", content=b"x" * (limit + 1))
        assert envelope(declared, 413)["code"] == "too_large"


def test_embedding_jobs_are_checked_at_acceptance_like_the_sync_route(platform: Platform) -> None:
    """Empty, too many and too long inputs: the same status and message on the sync route and as a job,
    and no job is queued for them."""
    settings = platform.settings
    bad: list[Any] = [[], ["a"] * (settings.max_embedding_inputs + 1), ["x" * (settings.max_prompt_chars + 1)]]
    with platform.client() as client:
        before = client.get("/api/v1/tasks", params={"type": "embedding", "limit": 1}).json()["total"]
        for texts in bad:
            sync = envelope(client.post("/api/v1/inference/embeddings", json={"input": texts}), 400)
            job = envelope(client.post("/api/v1/tasks", json={"type": "embedding", "params": {"input": texts}}), 400)
            assert job == sync and job["param"] == "input", (job, sync)
        after = client.get("/api/v1/tasks", params={"type": "embedding", "limit": 1}).json()["total"]
        assert after == before
        ok = client.post("/api/v1/tasks", json={"type": "embedding", "params": {"input": ["fine"]}})
        assert ok.status_code == 202, ok.text


@pytest.fixture(scope="module")
def local_results_gateway(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A gateway replica whose result store is a local folder (the session platform keeps results on S3)."""
    root = tmp_path_factory.mktemp("local-results")
    url = platform.start_extra_gateway("gateway-local-results", {"BITINGLIP_RESULTS_URL": f"file://{root}"})
    yield url, root
    platform.stop("gateway-local-results")


def test_a_result_directory_is_404(platform: Platform, local_results_gateway: tuple[str, Path]) -> None:
    url, root = local_results_gateway
    folder = root / "images" / platform.settings.admin_username / "a-folder"
    folder.mkdir(parents=True)
    (folder / "0.png").write_bytes(b"not really a png")
    with httpx.Client(base_url=url, headers=platform.auth, timeout=60) as client:
        assert client.get("/api/v1/files/images/admin/a-folder/0.png").content == b"not really a png"
        for path in ("images/admin/a-folder", "images/admin", "images/admin/a-folder/0.png/inside"):
            error = envelope(client.get(f"/api/v1/files/{path}"), 404, "not_found_error")
            assert error["param"] == "path"
    with platform.client() as client:  # S3 has no folders: the same answer there
        envelope(client.get("/api/v1/files/images/admin"), 404, "not_found_error")


def _batch(client: httpx.Client, lines: list[dict[str, Any]]) -> tuple[str, str]:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    body = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = client.post("/v1/batches", json=body)
    assert batch.status_code == 200, batch.text
    return upload.json()["id"], batch.json()["id"]


def _finished_batch(client: httpx.Client, batch_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (batch := client.get(f"/v1/batches/{batch_id}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
    return dict(batch)


def _chat_line(custom_id: str, content: str) -> dict[str, Any]:
    body = {"model": TEXT_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_batch_line_with_a_lone_surrogate_is_an_error_line(platform: Platform) -> None:
    """One bad line is refused when the file is read, with the route's message; the rest of the batch runs."""
    with platform.client() as client:
        _, batch_id = _batch(client, [_chat_line("good", "Say hi."), _chat_line("bad", "\ud800")])
        batch = _finished_batch(client, batch_id)
        assert batch["status"] == "completed", batch
        assert (batch["request_counts"]["completed"], batch["request_counts"]["failed"]) == (1, 1)
        errors = [
            json.loads(line) for line in client.get(f"/v1/files/{batch['error_file_id']}/content").text.splitlines()
        ]
        assert [e["custom_id"] for e in errors] == ["bad"]
        assert errors[0]["error"]["code"] == "invalid_body", errors
        assert "line 2: `messages`: at [0].content, a lone UTF-16 surrogate" in errors[0]["error"]["message"], errors


def test_unexpected_batch_failure_records_no_internal_text(platform: Platform, s3_server: S3Server) -> None:
    """The stored input vanishes between acceptance and the run (a lifecycle rule, an operator): the
    batch fails with the fixed internal-error message; the exception's text (storage paths, the
    bucket) stays in the logs."""
    with platform.client() as client:
        file_id, batch_id = _batch(client, [_chat_line("only", "Say hi.")])
        s3_server.filesystem().rm_file(f"{s3_server.bucket}/results/files/{file_id}.jsonl")
        batch = _finished_batch(client, batch_id)
        assert batch["status"] == "failed", batch
        [error] = batch["errors"]["data"]
        assert error["message"] == INTERNAL_ERROR_MESSAGE, error
        job = client.get(f"/api/v1/tasks/{batch_id}").json()
        assert job["error"]["message"] == INTERNAL_ERROR_MESSAGE and job["error"]["code"] == "internal_error"
        shown = json.dumps(job["error"]) + json.dumps(batch["errors"])
        for internal in (s3_server.bucket, file_id, "Error:", "Traceback"):
            assert internal not in shown, shown
