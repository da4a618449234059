"""Embeddings through the gateway and the openai SDK, on the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from tests.platform_harness import Platform
from tests.test_gateway_text import assert_envelope
from tests.test_jobs import wait_done

MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def client(platform: Platform) -> openai.OpenAI:
    return platform.sdk()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_openai_embeddings_are_unit_vectors_that_rank_meaning(client: openai.OpenAI) -> None:
    texts = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell today."]
    response = client.embeddings.create(model=MODEL, input=texts)
    vectors = [d.embedding for d in response.data]
    assert [d.index for d in response.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert response.usage.prompt_tokens > 0


def test_base64_encoding_matches_floats(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=MODEL, input="hello world").data[0].embedding
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="hello world", encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(encoded))
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(decoded, floats, strict=True))


def test_rest_embeddings_and_batching_consistency(platform: Platform) -> None:
    client = platform.client()
    alone = client.post("/api/v1/inference/embeddings", json={"input": "tea"}).json()
    many = client.post(
        "/api/v1/inference/embeddings", json={"input": ["coffee", "tea", "a much longer sentence"]}
    ).json()
    assert alone["dimensions"] == 384 and many["model"] == "all-minilm-l6-v2@main"
    # padding next to longer inputs must not change a vector
    assert all(
        math.isclose(a, b, abs_tol=1e-5)
        for a, b in zip(alone["data"][0]["embedding"], many["data"][1]["embedding"], strict=True)
    )


def test_bad_embedding_inputs(platform: Platform, client: openai.OpenAI) -> None:
    rest = platform.client()
    assert_envelope(rest.post("/api/v1/inference/embeddings", json={"input": []}), 400)
    too_many = ["x"] * (platform.settings.max_embedding_inputs + 1)
    assert_envelope(rest.post("/api/v1/inference/embeddings", json={"input": too_many}), 400)
    wrong_task = rest.post("/api/v1/inference/embeddings", json={"model": "smollm2-135m-instruct", "input": "x"})
    assert "is a text-generation model" in str(assert_envelope(wrong_task, 400, "model_task_mismatch")["message"])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=[])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input="x", dimensions=12)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-embedder", input="x")


def test_async_embedding_job(platform: Platform) -> None:
    client = platform.client()
    accepted = client.post("/api/v1/tasks", json={"type": "embedding", "params": {"input": ["first", "second"]}})
    assert accepted.status_code == 202, accepted.text
    job, _ = wait_done(client, accepted.json()["id"])
    assert job["status"] == "completed" and job["type"] == "embedding"
    assert len(job["result"]["data"]) == 2 and len(job["result"]["data"][0]) == 384
