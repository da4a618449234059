"""`prompt` on the native route behaves as Ollama's generate: a chat model gets it as one user message
through its chat template, `raw: true` sends it untouched, and async text jobs do the same; OpenAI's
/v1/completions stays raw, as in OpenAI and vLLM. On both text backends (llama.cpp, transformers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import TEXT_MODEL, TEXT_MODEL_FP32
from tests.platform_harness import Platform
from tests.security.conftest import envelope
from tests.test_jobs import submit, wait_done

QUESTION = "What is the capital of France?"  # raw, SmolLM2 ends it at once: "" after one token


def generate(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/inference/text", json={"max_tokens": 16, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture
def client(platform: Platform) -> Iterator[httpx.Client]:
    """The admin's client; the fp32 copy it may load is unloaded afterwards (no other test needs it warm)."""
    with platform.client() as admin:
        yield admin
        admin.post(f"/api/v1/models/{TEXT_MODEL_FP32}/unload")


@pytest.mark.parametrize("model", [TEXT_MODEL, TEXT_MODEL_FP32])
def test_a_prompt_is_a_user_message_unless_raw(client: httpx.Client, model: str) -> None:
    templated = generate(client, model=model, prompt=QUESTION)
    as_chat = generate(client, model=model, messages=[{"role": "user", "content": QUESTION}])
    raw = generate(client, model=model, prompt=QUESTION, raw=True)
    # the same tokens reach the model as for the one-message chat: the template's turn markers included
    assert templated["usage"]["prompt_tokens"] == as_chat["usage"]["prompt_tokens"]
    assert raw["usage"]["prompt_tokens"] < templated["usage"]["prompt_tokens"] - 5
    assert templated["text"].strip() and templated["usage"]["completion_tokens"] > 1, templated  # an answer
    streamed = client.post("/api/v1/inference/text", json={"model": model, "prompt": QUESTION, "stream": True})
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    (final,) = [e["result"] for e in events if "result" in e]
    assert final["usage"]["prompt_tokens"] == templated["usage"]["prompt_tokens"], final


def test_async_text_jobs_follow_the_same_rule(platform: Platform) -> None:
    client = platform.client()
    sync = {raw: generate(client, prompt=QUESTION, raw=raw)["usage"]["prompt_tokens"] for raw in (False, True)}
    for raw in (False, True):
        job, _ = wait_done(client, submit(client, {"prompt": QUESTION, "max_tokens": 4, "raw": raw})["id"])
        assert job["status"] == "completed" and job["params"]["raw"] is raw, job
        assert job["result"]["usage"]["prompt_tokens"] == sync[raw], (raw, job["result"])


def test_openai_completions_stay_raw(platform: Platform) -> None:
    raw = generate(platform.client(), prompt=QUESTION, raw=True)["usage"]["prompt_tokens"]
    completion = platform.sdk().completions.create(model=TEXT_MODEL, prompt=QUESTION, max_tokens=2, temperature=0)
    assert completion.usage is not None and completion.usage.prompt_tokens == raw


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [{"role": "user", "content": "hi"}], "raw": True}, "`raw` applies to a `prompt`"),
        ({"prompt": "hi", "raw": "maybe"}, "`raw` should be a valid boolean"),
        ({"prompt": "hi", "raw": 2}, "`raw` should be a valid boolean"),
        ({"prompt": "hi", "raw": None}, "`raw` should be a valid boolean"),
    ],
)
def test_hostile_raw_values(platform: Platform, body: dict[str, Any], message: str) -> None:
    with platform.client() as client:
        for path, wrapped in (("/api/v1/inference/text", body), ("/api/v1/tasks", {"params": body})):
            error = envelope(client.post(path, json=wrapped), 422, "invalid_request_error")
            assert message.lstrip("`") in error["message"], (path, error)  # `params.raw` in a job
