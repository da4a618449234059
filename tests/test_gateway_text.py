"""Sync text generation through the real gateway -> model worker path, and its error envelope."""

from __future__ import annotations

import re

import httpx

from tests.conftest import CAPITAL
from tests.platform_harness import Platform


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


def test_health_reports_every_component(platform: Platform) -> None:
    body = platform.client().get("/health").json()
    assert body["status"] == "ok"
    assert body["prefect"]["status"] == "ok"
    (worker,) = body["workers"]
    assert worker["healthy"]
    # the worker's own models, warm (other tests of the session may have loaded more on demand)
    assert {"all-minilm-l6-v2@main", "smollm2-135m-instruct@q4_1", "tiny-sd-test@v1"} <= set(worker["models"])


def test_models_lists_the_installed_text_model(platform: Platform) -> None:
    models = {m["id"]: m for m in platform.client().get("/api/v1/models").json()["data"]}
    assert models["all-minilm-l6-v2@main"]["task"] == "embedding"
    model = models["smollm2-135m-instruct@q4_1"]
    assert model["id"] == "smollm2-135m-instruct@q4_1"
    assert model["task"] == "text" and model["status"] == "ready"
    assert model["size_bytes"] > 90_000_000 and model["backend"] == "llama.cpp"  # the 4-bit GGUF as it is
    assert model["loaded_on"]


def test_capital_of_france_is_paris(platform: Platform) -> None:
    response = platform.client().post(
        "/api/v1/inference/text", json={"messages": CAPITAL, "max_tokens": 24, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "Paris" in body["text"]
    assert body["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["timings"]["total_seconds"] > 0


def test_prompt_stop_and_length(platform: Platform) -> None:
    client = platform.client()
    long = client.post(
        "/api/v1/inference/text", json={"prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0, "raw": True}
    )
    assert long.json()["finish_reason"] == "length" and long.json()["usage"]["completion_tokens"] == 6
    stopped = client.post(
        "/api/v1/inference/text",
        json={"prompt": "1, 2, 3,", "max_tokens": 30, "temperature": 0, "stop": [" 6"], "raw": True},
    ).json()
    assert stopped["finish_reason"] == "stop" and " 6" not in stopped["text"]
    assert stopped["text"].startswith(" 4, 5,")


def test_seeded_sampling_is_reproducible(platform: Platform) -> None:
    client = platform.client()
    payload = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0.9, "top_p": 0.9, "seed": 7}
    first = client.post("/api/v1/inference/text", json=payload).json()["text"]
    second = client.post("/api/v1/inference/text", json=payload).json()["text"]
    assert first == second


def test_streaming_sse_matches_non_streaming(platform: Platform) -> None:
    client = platform.client()
    # seeded, not greedy: on llama.cpp a greedy reply can take another word at a near tie with the cached
    # prefix it started from and the batch it ran in, while a seeded request at an idle engine starts from
    # an empty cache and repeats exactly (docs/architecture.md §3.15); computed now, like the stream
    # (streams never come from the result cache)
    payload = {"messages": CAPITAL, "max_tokens": 24, "temperature": 0.7, "seed": 11}
    computed = {"Cache-Control": "no-store"}
    plain = client.post("/api/v1/inference/text", json=payload, headers=computed).json()["text"]
    deltas, final = [], None
    with client.stream("POST", "/api/v1/inference/text", json={**payload, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    import json

    for line in lines[:-1]:
        event = json.loads(line.removeprefix("data: "))
        if "delta" in event:
            deltas.append(event["delta"])
        final = event.get("result", final)
    assert len(deltas) > 1
    assert "".join(deltas) == plain
    assert final is not None and final["text"] == plain


def test_unknown_model_is_404(platform: Platform) -> None:
    response = platform.client().post("/api/v1/inference/text", json={"model": "nope", "prompt": "hi"})
    assert_envelope(response, 404, "model_not_found")


def test_invalid_parameters_are_422(platform: Platform) -> None:
    client = platform.client()
    for bad in (
        {"prompt": "hi", "temperature": 5},
        {"prompt": "hi", "max_tokens": 0},
        {"prompt": "hi", "messages": CAPITAL},
        {},
        {"prompt": "hi", "top_p": 0},
    ):
        assert_envelope(client.post("/api/v1/inference/text", json=bad), 422, "invalid_parameter")
    assert_envelope(  # not JSON at all: a 400 that says where (tests/test_error_messages.py)
        client.post("/api/v1/inference/text", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )


def test_prompt_over_context_is_400(platform: Platform) -> None:
    response = platform.client().post("/api/v1/inference/text", json={"prompt": "hello " * 9000, "max_tokens": 16})
    error = assert_envelope(response, 400, "context_length_exceeded")
    assert re.search(r"maximum context length is \d+ tokens; the prompt has \d+ tokens", str(error["message"]))


def test_max_tokens_past_context_is_400(platform: Platform) -> None:
    response = platform.client().post("/api/v1/inference/text", json={"prompt": "hi", "max_tokens": 9000})
    assert_envelope(response, 400)


def test_oversized_body_is_413(platform: Platform) -> None:
    body = {"prompt": "x" * (platform.settings.max_request_bytes + 10)}
    assert_envelope(platform.client().post("/api/v1/inference/text", json=body), 413, "too_large")
