"""The model store parses a manifest once and again only when its file changed: every request and job
resolves its model through it, so a reinstall, a removal or a damaged file must still show at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from bitinglip.errors import ModelNotFound
from bitinglip.models.store import MANIFEST, ModelStore


def _install(store: ModelStore, content: str = "weights") -> None:
    with store.staging() as staged:
        (staged / "model.bin").write_text(content)
        store.install(staged, name="tiny", revision="main", task="text", source="test://tiny")


def test_a_manifest_is_parsed_once_and_shared_frozen(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store)
    first = store.resolve("tiny@main")
    assert store.resolve("tiny@main") is first
    assert store.resolve("tiny") is first  # the name alone reads through the same memory
    with pytest.raises(ValidationError):
        first.source = "elsewhere"  # type: ignore[misc]


def test_a_reinstall_and_a_removal_show_at_once(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store, "one")
    before = store.resolve("tiny@main")
    _install(store, "two, longer")
    after = store.resolve("tiny@main")
    assert after is not before and after.installed_at > before.installed_at
    assert after.files["model.bin"].size == len("two, longer")
    store.remove("tiny", "main")
    with pytest.raises(ModelNotFound):
        store.resolve("tiny@main")
    assert store.installed() == []


def test_a_manifest_changed_in_place_is_read_again(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store)
    file = store.path_for("tiny", "main") / MANIFEST
    original = store.resolve("tiny@main")
    time.sleep(0.01)
    file.write_text(file.read_text().replace("test://tiny", "test://edited"))
    assert store.resolve("tiny@main").source == "test://edited"
    file.write_text("{not json")
    assert store.installed() == []  # damaged: never served
    with pytest.raises(ValueError):
        store.manifest("tiny", "main")
    assert original.source == "test://tiny"
