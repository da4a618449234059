"""One user cannot fail everyone's requests: poison sampling parameters (temperatures such as 1e-300,
which once turned sampling into NaN and failed the whole continuous batch, tiny top_p, logprobs) sent
concurrently with normal chat requests to the running platform. Every normal request answers 200 with
its usual answer; no poison request gets a 500: tiny temperatures decode greedily, out-of-range values
are refused with 400. On both text backends: transformers gives the same greedy answer in any batch, so
there every answer must equal the lone one; llama.cpp's batched kernels round differently with the batch's
shape, so a greedy answer may change with its neighbours there, and the test asks every answer to be a
real one (200, no error event, not empty) instead."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import CAPITAL, TEXT_MODEL, TEXT_MODEL_FP32
from tests.platform_harness import Platform
from tests.security.conftest import envelope

NORMAL: dict[str, Any] = {"model": TEXT_MODEL, "messages": CAPITAL, "max_tokens": 10, "temperature": 0}
GREEDY_POISON: list[dict[str, Any]] = [  # tiny temperatures: the same answer as temperature 0
    {"temperature": 1e-300},
    {"temperature": 1e-30},
    {"temperature": 5e-324, "top_p": 1e-300, "seed": 7, "logprobs": True, "top_logprobs": 20},
]
NUCLEUS_POISON: list[dict[str, Any]] = [  # a nucleus this small keeps only the most likely token
    {"temperature": 2.0, "top_p": 5e-324, "seed": 1, "logprobs": True, "top_logprobs": 20},
]
REFUSED_POISON: list[dict[str, Any]] = [{"temperature": 1e300}, {"temperature": -1e-300}, {"top_p": 1e300}]


def _content(response: httpx.Response) -> str:
    assert response.status_code == 200, (response.status_code, response.text)
    choice = response.json()["choices"][0]
    text: str = choice["message"]["content"]
    if choice.get("logprobs"):
        json.dumps(choice["logprobs"], allow_nan=False)  # every logprob is a JSON number
    return text


def _streamed(client: httpx.Client, body: dict[str, Any]) -> tuple[int, str, list[dict[str, Any]]]:
    """Status, joined content and any error events of a streamed chat completion."""
    text, errors = "", []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, response.text, []
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                errors.append(event["error"])
            for choice in event.get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return 200, text, errors


@pytest.mark.parametrize(("model", "batch_invariant"), [(TEXT_MODEL_FP32, True), (TEXT_MODEL, False)])
def test_poison_requests_fail_nobody_else(platform: Platform, model: str, batch_invariant: bool) -> None:
    normal_body = {**NORMAL, "model": model}
    computed = {"Cache-Control": "no-store"}  # every request runs in the engine's batch, none is a replay
    with platform.client() as client:
        expected = _content(client.post("/v1/chat/completions", json=normal_body, headers=computed))  # alone, first
    assert "Paris" in expected

    def same(answer: str) -> bool:
        return answer == expected if batch_invariant else bool(answer.strip())

    local = threading.local()
    clients: list[httpx.Client] = []

    def post(extra: dict[str, Any] | None, stream: bool = False) -> Any:
        if not hasattr(local, "client"):
            local.client = platform.client(timeout=540)  # a shared CPU box can be slow; a hang still fails
            local.client.headers.update(computed)
            clients.append(local.client)
        body = normal_body if extra is None else {**normal_body, **extra}
        if stream:
            return _streamed(local.client, body)
        return local.client.post("/v1/chat/completions", json=body)

    with ThreadPoolExecutor(max_workers=12) as pool:
        normal = [pool.submit(post, None) for _ in range(3)]  # in the running batch when the poison joins
        greedy = [pool.submit(post, extra) for extra in GREEDY_POISON]
        nucleus = [pool.submit(post, extra) for extra in NUCLEUS_POISON]
        refused = [pool.submit(post, extra) for extra in REFUSED_POISON]
        streamed = pool.submit(post, {"temperature": 1e-300}, True)
        normal += [pool.submit(post, None)]  # and after it
    for client in clients:  # the pool has waited for every request
        client.close()

    for future in normal:
        assert same(_content(future.result()))  # a neighbour's poison changes nothing
    for future, extra in zip((*greedy, *nucleus), GREEDY_POISON + NUCLEUS_POISON, strict=True):
        assert same(_content(future.result())), extra  # decoded greedily, not a 500
    for future in refused:
        envelope(future.result(), 400, "invalid_request_error")
    status, text, errors = streamed.result()
    assert (status, errors) == (200, []) and same(text)
