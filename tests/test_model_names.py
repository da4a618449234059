"""Model names as people know them, on the native and OpenAI routes (the official SDK) and async jobs:
the Hugging Face id is an alias of the installed model; a model asked to do another task says which
routes serve it; an unknown name gets the closest names the caller may use, never a withheld one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import CAPITAL, EMBEDDING_MODEL, TEXT_MODEL
from tests.platform_harness import Platform
from tests.security.conftest import envelope

SMOL_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"


def test_the_hugging_face_id_names_the_installed_model(platform: Platform) -> None:
    client = platform.client()
    for alias in (SMOL_HUB, SMOL_HUB.lower(), f"{SMOL_HUB}@q4_1"):
        reply = client.post("/api/v1/inference/text", json={"model": alias, "messages": CAPITAL, "max_tokens": 4})
        assert reply.status_code == 200 and reply.json()["model"] == f"{TEXT_MODEL}@q4_1", (alias, reply.text)
    embedded = client.post("/api/v1/inference/embeddings", json={"model": MINILM_HUB, "input": "hi"})
    assert embedded.status_code == 200 and embedded.json()["model"] == f"{EMBEDDING_MODEL}@main"
    job = client.post("/api/v1/tasks", json={"params": {"model": SMOL_HUB, "prompt": "hi", "max_tokens": 1}})
    assert job.status_code == 202 and job.json()["model"] == f"{TEXT_MODEL}@q4_1", job.text
    sdk = platform.sdk()
    chat = sdk.chat.completions.create(model=SMOL_HUB, messages=CAPITAL, max_tokens=4, temperature=0)
    assert chat.choices[0].message.content and chat.model == SMOL_HUB  # echoed as asked, as OpenAI does
    assert len(sdk.embeddings.create(model=MINILM_HUB, input=["a", "b"]).data[1].embedding) == 384
    with pytest.raises(openai.NotFoundError):  # a revision it does not have is no alias of anything
        sdk.chat.completions.create(model=f"{SMOL_HUB}@main", messages=CAPITAL, max_tokens=1)


def test_a_model_of_another_task_says_where_it_belongs(platform: Platform) -> None:
    client = platform.client()
    wrong = client.post("/api/v1/inference/text", json={"model": EMBEDDING_MODEL, "prompt": "hi"})
    error = envelope(wrong, 400, "invalid_request_error")
    assert error["code"] == "model_task_mismatch" and error["param"] == "model"
    assert error["message"] == (
        f"`{EMBEDDING_MODEL}` is an embedding model; use /v1/embeddings or /api/v1/inference/embeddings."
    )
    job = client.post("/api/v1/tasks", json={"type": "embedding", "params": {"model": SMOL_HUB, "input": "x"}})
    assert "is a text-generation model; use /v1/chat/completions" in envelope(job, 400)["message"]
    sdk = platform.sdk()
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model=EMBEDDING_MODEL, messages=CAPITAL, max_tokens=1)
    assert raised.value.code == "model_task_mismatch" and "use /v1/embeddings" in raised.value.message
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.embeddings.create(model=TEXT_MODEL, input="hi")
    assert f"`{TEXT_MODEL}` is a text-generation model" in raised.value.message


def test_unknown_names_suggest_the_closest_usable_ones(platform: Platform) -> None:
    client = platform.client()
    for typo in ("smollm2-135m-instruc", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruc"):
        error = envelope(client.post("/api/v1/inference/text", json={"model": typo, "prompt": "hi"}), 404)
        assert error["code"] == "model_not_found" and f"Did you mean `{TEXT_MODEL}`" in error["message"], error
    far = envelope(client.post("/api/v1/inference/embeddings", json={"model": "qqqq", "input": "hi"}), 404)
    assert far["message"].startswith("The model `qqqq` does not exist or is not installed. Embedding models you")
    assert f"`{EMBEDDING_MODEL}`" in far["message"]
    with pytest.raises(openai.NotFoundError) as raised:
        platform.sdk().embeddings.create(model="all-minilm-l6", input="hi")
    assert f"Did you mean `{EMBEDDING_MODEL}`" in raised.value.message


@pytest.fixture
def smol_withheld(platform: Platform) -> Iterator[openai.OpenAI]:
    """A user who may not use the default SmolLM2 (restricted to the admin for this test)."""
    admin = platform.client()
    username = f"nosmol-{uuid.uuid4().hex[:6]}"
    assert admin.post("/api/v1/users", json={"username": username}).status_code == 201
    key = admin.post("/api/v1/auth/keys", json={"username": username, "name": "t"}).json()["key"]
    rule: dict[str, Any] = {"restricted": True, "users": [platform.settings.admin_username]}
    assert admin.put(f"/api/v1/models/{TEXT_MODEL}/access", json=rule).status_code == 200
    try:
        yield platform.sdk(key=key)
    finally:
        assert admin.put(f"/api/v1/models/{TEXT_MODEL}/access", json={"restricted": False}).status_code == 200


def test_a_withheld_model_is_neither_found_by_alias_nor_suggested(smol_withheld: openai.OpenAI) -> None:
    for asked in (SMOL_HUB, "smollm2-135m-instruc", TEXT_MODEL):
        with pytest.raises(openai.NotFoundError) as raised:
            smol_withheld.chat.completions.create(model=asked, messages=CAPITAL, max_tokens=1)
        said, _, suggested = raised.value.message.partition("installed")
        assert "does not exist" in said and TEXT_MODEL not in suggested, raised.value.message


@pytest.mark.parametrize("name", ["../../etc/passwd", "a\nb", "`rm -rf`", "x" * 5000, "名前", "@", "a@b@c"])
def test_hostile_model_names_are_404s_in_the_envelope(platform: Platform, name: str) -> None:
    with platform.client() as client:
        for path, body in (
            ("/api/v1/inference/text", {"model": name, "prompt": "hi", "max_tokens": 1}),
            ("/v1/chat/completions", {"model": name, "messages": CAPITAL, "max_tokens": 1}),
            ("/v1/embeddings", {"model": name, "input": "hi"}),
        ):
            error = envelope(client.post(path, json=body), 404, "not_found_error")
            assert error["param"] == "model" and len(error["message"]) < 400, error
            assert "\n" not in error["message"] and "`rm" not in error["message"], error
