"""Model memory through the API, on the running platform: load and unload by hand (admin only), what is
loaded where in /api/v1/workers (what `bitinglip ps` shows), a request's keep_alive (native and OpenAI
routes) unloading an idle model, 409 for unloading a busy model unless forced, hostile names and
keep_alive values, and a second model worker with a small memory budget answering 503 when a model
cannot fit next to a pinned one, from which the gateway sends requests on to a worker with room."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import CAPITAL, EMBEDDING_MODEL, IMAGE_MODEL, TEXT_MODEL, TEXT_MODEL_FP32
from tests.platform_harness import Platform
from tests.test_gateway_text import assert_envelope

BUDGET = 120_000_000  # MiniLM (~91 MB) fits; SmolLM2 never does (147 MB on llama.cpp, 538 MB in fp32)
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def main_worker(platform: Platform) -> Iterator[str]:
    """The platform's worker; at the end it holds the session's models warm again, as it found them."""
    yield platform.settings.worker_name
    client = platform.client()
    for model in (TEXT_MODEL, EMBEDDING_MODEL, IMAGE_MODEL):
        params = {"worker": platform.settings.worker_name}
        restored = client.post(f"/api/v1/models/{model}/load", json={"keep_alive": -1}, params=params)
        assert restored.status_code == 200, restored.text


@pytest.fixture(scope="module")
def tight_worker(platform: Platform, main_worker: str) -> Iterator[str]:
    name = platform.start_extra_worker(
        f"tight-{uuid.uuid4().hex[:6]}", {"BITINGLIP_WORKER_MEMORY_BUDGET_BYTES": str(BUDGET)}
    )
    try:
        yield name
    finally:
        platform.stop(name)


def worker_view(platform: Platform, worker_id: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(models by name, the worker) from /api/v1/workers."""
    body = platform.client().get("/api/v1/workers").json()
    [worker] = [w for w in body["model_workers"] if w["id"] == worker_id]
    return {m["name"]: m for m in worker["models"]}, worker


def eventually(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.2)


def drain(lines: Iterator[str]) -> None:
    """Read a stream to its end, or until it is closed under us."""
    with contextlib.suppress(Exception):
        for _ in lines:
            pass


def test_load_and_unload_by_hand_show_in_the_workers_view(platform: Platform, main_worker: str) -> None:
    client = platform.client()
    unloaded = client.post(f"/api/v1/models/{EMBEDDING_MODEL}/unload")
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json() == {
        "model": f"{EMBEDDING_MODEL}@main",
        "workers": [{"worker": main_worker, "status": "unloaded", "model": None}],
    }
    assert EMBEDDING_MODEL not in worker_view(platform, main_worker)[0]  # the worker beat at once
    again = client.post(f"/api/v1/models/{EMBEDDING_MODEL}/unload")
    assert again.json()["workers"][0]["status"] == "not_loaded"

    loaded = client.post(f"/api/v1/models/{EMBEDDING_MODEL}/load", json={"keep_alive": "10m"})
    assert loaded.status_code == 200, loaded.text
    [outcome] = loaded.json()["workers"]
    assert outcome["worker"] == main_worker and outcome["status"] == "loaded"
    assert outcome["model"]["keep_alive_s"] == 600 and outcome["model"]["memory_bytes"] > 10_000_000

    models, worker = worker_view(platform, main_worker)
    minilm = models[EMBEDDING_MODEL]
    assert minilm["keep_alive_s"] == 600 and 0 < minilm["expires_in_s"] <= 600
    assert minilm["backend"] == "transformers" and minilm["pinned"] is False
    assert minilm["idle_s"] >= 0 and minilm["last_used"] and minilm["running"] == 0
    assert worker["memory_budget_bytes"] is None  # the platform's worker has no byte limit
    assert worker["memory_used_bytes"] == sum(m["memory_bytes"] for m in models.values())
    assert {TEXT_MODEL, IMAGE_MODEL} <= set(models)
    assert models[TEXT_MODEL]["expires_in_s"] is None  # the worker's own models stay loaded


def test_a_requests_keep_alive_unloads_the_idle_model(platform: Platform, main_worker: str) -> None:
    client = platform.client()
    # a request sets the keep-alive of a model it loads (on a loaded one it may only lengthen it)
    assert client.post(f"/api/v1/models/{EMBEDDING_MODEL}/unload").status_code == 200
    eventually(lambda: EMBEDDING_MODEL not in worker_view(platform, main_worker)[0])
    answered = client.post("/api/v1/inference/embeddings", json={"input": "tea", "keep_alive": "1s"})
    assert answered.status_code == 200, answered.text
    eventually(lambda: EMBEDDING_MODEL not in worker_view(platform, main_worker)[0])

    # the OpenAI routes take it too (an extension); the model loads on demand first
    platform.sdk().embeddings.create(model=EMBEDDING_MODEL, input="tea", extra_body={"keep_alive": 0})
    eventually(lambda: EMBEDDING_MODEL not in worker_view(platform, main_worker)[0])
    # a request may lengthen a loaded model's keep-alive, never shorten it: one tenant's 0 does not
    # unload the worker's own model, which stays loaded for everyone
    chat = {"model": TEXT_MODEL, "messages": HI, "max_tokens": 2, "keep_alive": "0"}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    time.sleep(1.5)
    assert worker_view(platform, main_worker)[0][TEXT_MODEL]["expires_in_s"] is None
    short = client.post(f"/api/v1/models/{EMBEDDING_MODEL}/load", json={"keep_alive": "1h"})
    assert short.status_code == 200, short.text
    client.post("/api/v1/inference/embeddings", json={"input": "tea", "keep_alive": "5s"})  # no shorter
    assert worker_view(platform, main_worker)[0][EMBEDDING_MODEL]["keep_alive_s"] == 3600


def test_unloading_a_busy_model_needs_force(platform: Platform, main_worker: str) -> None:
    client, admin = platform.client(), platform.client()
    story = {"messages": [{"role": "user", "content": "Write a very long story about the sea."}], "max_tokens": 400}
    with client.stream("POST", "/api/v1/inference/text", json={**story, "stream": True}) as response:
        lines = response.iter_lines()
        assert '"delta"' in next(lines)  # generating
        refused = admin.post(f"/api/v1/models/{TEXT_MODEL}/unload")
        error = assert_envelope(refused, 409, "conflict")
        assert "running" in str(error["message"]) and "force=true" in str(error["message"])
        forced = admin.post(f"/api/v1/models/{TEXT_MODEL}/unload", params={"force": "true"})
        assert forced.status_code == 200 and forced.json()["workers"][0]["status"] == "unloaded"
        assert any('"error"' in line for line in lines)  # the stream is told, as an SSE error event
    assert TEXT_MODEL not in worker_view(platform, main_worker)[0]
    back = admin.post(f"/api/v1/models/{TEXT_MODEL}/load", json={"keep_alive": "-1"})
    assert back.status_code == 200, back.text


def test_only_admins_load_and_unload(platform: Platform) -> None:
    admin = platform.client()
    username = f"mem-{uuid.uuid4().hex[:8]}"
    assert admin.post("/api/v1/users", json={"username": username}).status_code == 201
    key = admin.post("/api/v1/auth/keys", json={"username": username}).json()["key"]
    for action in ("load", "unload"):
        path = f"/api/v1/models/{EMBEDDING_MODEL}/{action}"
        assert_envelope(platform.client(key=key).post(path), 403, "admin_only")
        assert_envelope(platform.client(key="").post(path), 401, "invalid_api_key")
    assert_envelope(platform.client(key=key).get("/api/v1/workers"), 403)


def test_hostile_names_and_workers(platform: Platform) -> None:
    client = platform.client()
    for action in ("load", "unload"):
        assert_envelope(client.post(f"/api/v1/models/{'a' * 300}/{action}"), 400)
        assert_envelope(client.post(f"/api/v1/models/x..y/{action}"), 400)
        traversal = client.post(f"/api/v1/models/..%2F..%2Fetc/{action}")
        assert traversal.status_code in (400, 404) and "error" in traversal.json()
        assert_envelope(client.post(f"/api/v1/models/no-such-model/{action}"), 404)
        assert_envelope(client.post(f"/api/v1/models/{EMBEDDING_MODEL}/{action}", params={"worker": "nobody"}), 404)
        assert_envelope(client.post(f"/api/v1/models/{EMBEDDING_MODEL}/{action}", params={"worker": "w" * 300}), 422)


@pytest.mark.parametrize("value", ["-5m", "-2", "abc", "5 m", "1y", "721h", "9" * 100, 10**30, -3])
def test_hostile_keep_alive_values_are_400(platform: Platform, value: object) -> None:
    client = platform.client()
    routes: list[tuple[str, dict[str, Any]]] = [
        (f"/api/v1/models/{EMBEDDING_MODEL}/load", {}),
        ("/api/v1/inference/text", {"prompt": "hi", "max_tokens": 1}),
        ("/api/v1/inference/embeddings", {"input": "tea"}),
        ("/v1/chat/completions", {"model": TEXT_MODEL, "messages": HI, "max_tokens": 1}),
        ("/v1/completions", {"model": TEXT_MODEL, "prompt": "hi", "max_tokens": 1}),
        ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "tea"}),
    ]
    requests = [(path, {**body, "keep_alive": value}) for path, body in routes]
    job = {"prompt": "hi", "max_tokens": 1, "keep_alive": value}
    requests.append(("/api/v1/tasks", {"type": "text", "params": job}))
    for path, body in requests:
        error = assert_envelope(client.post(path, json=body), 400)
        assert error["param"] == "keep_alive" and "keep_alive" in str(error["message"]), (path, error)


def test_a_keep_alive_of_the_wrong_type_is_refused(platform: Platform) -> None:
    """Booleans and objects are not durations: the native routes' 422, the OpenAI routes' 400."""
    client = platform.client()
    assert_envelope(client.post("/api/v1/inference/text", json={"prompt": "hi", "keep_alive": True}), 422)
    assert_envelope(client.post(f"/api/v1/models/{EMBEDDING_MODEL}/load", json={"keep_alive": {"m": 1}}), 422)
    chat = {"model": TEXT_MODEL, "messages": HI, "keep_alive": [5]}
    assert_envelope(client.post("/v1/chat/completions", json=chat), 400)


def test_a_worker_never_loads_past_its_budget(platform: Platform, main_worker: str, tight_worker: str) -> None:
    client = platform.client()
    loaded = client.post(f"/api/v1/models/{EMBEDDING_MODEL}/load", json={"keep_alive": -1})  # every healthy one
    assert loaded.status_code == 200, loaded.text
    outcomes = {o["worker"]: o for o in loaded.json()["workers"]}
    assert set(outcomes) == {main_worker, tight_worker} and {o["status"] for o in outcomes.values()} == {"loaded"}
    minilm_bytes = outcomes[tight_worker]["model"]["memory_bytes"]
    assert 0 < minilm_bytes <= BUDGET
    assert client.post(f"/api/v1/models/{EMBEDDING_MODEL}/pin").status_code == 200
    try:
        eventually(lambda: worker_view(platform, tight_worker)[0][EMBEDDING_MODEL]["pinned"])
        refused = client.post(f"/api/v1/models/{TEXT_MODEL}/load", params={"worker": tight_worker})
        error = assert_envelope(refused, 503, "memory_budget")
        message = str(error["message"])
        assert message.startswith(f"model worker {tight_worker}: loading {TEXT_MODEL}@")
        assert "; worker budget 120 MB, pinned/busy models hold 9" in message  # MiniLM, pinned: ~91 MB

        # on every healthy worker: the platform's worker has it already, the tight one refuses
        everywhere = assert_envelope(client.post(f"/api/v1/models/{TEXT_MODEL}/load"), 503, "memory_budget")
        assert f"(done on {main_worker})" in str(everywhere["message"])

        models, worker = worker_view(platform, tight_worker)
        assert set(models) == {EMBEDDING_MODEL}  # the refused loads unloaded nothing
        assert worker["memory_budget_bytes"] == BUDGET and worker["memory_used_bytes"] == minilm_bytes
    finally:
        assert client.post(f"/api/v1/models/{EMBEDDING_MODEL}/unpin").status_code == 200
    eventually(lambda: not worker_view(platform, tight_worker)[0][EMBEDDING_MODEL]["pinned"])

    # Unpinned, MiniLM goes to make room. SmolLM2 then holds more than the whole budget: more than its
    # files as soon as it is loaded (llama.cpp's KV cache), or already by its files (the fp32 copy).
    # Either way the worker gives it back rather than run past its budget.
    grown = client.post(f"/api/v1/models/{TEXT_MODEL}/load", params={"worker": tight_worker})
    assert "(more than the whole budget); worker budget 120 MB" in str(assert_envelope(grown, 503)["message"])
    eventually(lambda: worker_view(platform, tight_worker)[1]["memory_used_bytes"] == 0)
    assert worker_view(platform, tight_worker)[0] == {}

    unloaded = client.post(f"/api/v1/models/{EMBEDDING_MODEL}/unload")  # from every healthy worker
    assert unloaded.status_code == 200, unloaded.text
    outcomes = {o["worker"]: o["status"] for o in unloaded.json()["workers"]}
    assert outcomes == {main_worker: "unloaded", tight_worker: "not_loaded"}


def test_the_gateway_takes_a_request_a_worker_has_no_room_for_elsewhere(
    platform: Platform, main_worker: str, tight_worker: str
) -> None:
    """Routing sends a model that is warm nowhere to the least busy worker: the tight one, while the
    platform's worker streams a story. The tight one cannot fit the fp32 copy (540 MB in a 120 MB
    budget) and answers 503 `memory_budget`; nothing ran there, so the gateway asks the other worker,
    for plain and for streamed requests alike. The client never sees the refusal."""
    client, admin = platform.client(), platform.client()
    story = {
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 2000,
        "ignore_eos": True,  # busy for the whole test, whatever the model would say
    }
    with client.stream("POST", "/api/v1/inference/text", json={**story, "stream": True}) as busy:
        lines = busy.iter_lines()
        assert '"delta"' in next(lines)  # the platform's worker is generating
        # read on as a client does: a stream nobody reads is closed by the gateway once its buffers fill
        threading.Thread(target=drain, args=(lines,), daemon=True).start()
        eventually(lambda: worker_view(platform, main_worker)[1]["queue_depth"] >= 1)
        for stream in (False, True):
            assert admin.post(f"/api/v1/models/{TEXT_MODEL_FP32}/unload").status_code == 200
            eventually(lambda: TEXT_MODEL_FP32 not in worker_view(platform, main_worker)[0])
            sdk = platform.sdk()
            if stream:
                chunks = sdk.chat.completions.create(
                    model=TEXT_MODEL_FP32, messages=CAPITAL, max_tokens=12, temperature=0, stream=True
                )
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                reply = sdk.chat.completions.create(
                    model=TEXT_MODEL_FP32, messages=CAPITAL, max_tokens=12, temperature=0
                )
                text = reply.choices[0].message.content or ""
            assert "Paris" in text
            assert set(worker_view(platform, tight_worker)[0]) <= {EMBEDDING_MODEL}  # it loaded nothing
            assert TEXT_MODEL_FP32 in worker_view(platform, main_worker)[0]  # it ran there
    assert admin.post(f"/api/v1/models/{TEXT_MODEL_FP32}/unload").status_code == 200  # as it was before
