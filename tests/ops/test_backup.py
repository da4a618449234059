"""`bitinglip backup` of a live platform (users, keys, a finished job, a pinned model, Prefect's
runs) restored into a fresh home, where a new platform finds them all; restores that must be
refused (a non-empty home, hostile archives) write nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from bitinglip.config import Settings
from bitinglip.home_secrets import SECRETS
from bitinglip.models.store import ModelStore
from bitinglip.platform import PROJECT_DIR
from tests.conftest import EMBEDDING_MODEL
from tests.platform_harness import Platform, free_port, platform_settings
from tests.test_jobs import prefect_task_run_state, wait_done

ONLY_EMBEDDINGS = {"BITINGLIP_WORKER_MODELS": json.dumps([EMBEDDING_MODEL])}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", *args],
        env={**env, "COLUMNS": "200"},
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )


def home_with(tmp: Path, store: ModelStore, model: str) -> Path:
    """A home holding one installed model (hard links into the session's store)."""
    for manifest in store.installed():
        if manifest.name == model:
            target = tmp / "models" / manifest.name / manifest.revision
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(store.path(manifest), target, copy_function=os.link)
    return tmp


def secrets_in_home(settings: Settings) -> None:
    """As `up` keeps them: generated secrets in home/secrets.json, the admin key in home/admin.key."""
    values = {name: settings.secret(name) for name in SECRETS}
    (settings.home_dir / "secrets.json").write_text(json.dumps(values))
    (settings.home_dir / "secrets.json").chmod(0o600)
    assert settings.admin_api_key is not None
    (settings.home_dir / "admin.key").write_text(settings.admin_api_key.get_secret_value())
    (settings.home_dir / "admin.key").chmod(0o600)


def cli_env(settings: Settings) -> dict[str, str]:
    """Only what the CLI needs to find the home: everything else comes from the home itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITINGLIP_", "PREFECT_"))}
    return {**env, "BITINGLIP_HOME": str(settings.home_dir)}


def test_backup_of_a_live_platform_restores_into_a_fresh_home(tmp_path: Path, model_store: ModelStore) -> None:
    settings = platform_settings(home_with(tmp_path / "home", model_store, EMBEDDING_MODEL))
    secrets_in_home(settings)
    original = Platform(settings, env_overrides=ONLY_EMBEDDINGS)
    archive = tmp_path / "backups" / "platform.tar.gz"
    try:
        original.start_prefect()
        original.start_worker(wait=False)
        original.start_gateway()
        original.wait_ready(timeout=120)
        admin = original.client()
        username = f"carol-{uuid.uuid4().hex[:6]}"
        assert admin.post("/api/v1/users", json={"username": username}).status_code == 201
        created = admin.post("/api/v1/auth/keys", json={"username": username, "name": "laptop"})
        assert created.status_code == 201, created.text
        carol_key = created.json()["key"]
        carol = original.client(key=carol_key)
        accepted = carol.post("/api/v1/tasks", json={"type": "embedding", "params": {"input": ["kept"]}})
        assert accepted.status_code == 202, accepted.text
        job, _ = wait_done(carol, accepted.json()["id"])
        assert job["status"] == "completed"
        assert admin.post(f"/api/v1/models/{EMBEDDING_MODEL}/pin").status_code == 200
        # A backup holds what Prefect has recorded by then: its server writes task runs in batches, within a
        # second on the embedded default (docs/architecture.md §3.3).
        assert prefect_task_run_state(original, job["prefect_run_id"]) == "COMPLETED"
        backup = cli(cli_env(settings), "backup", str(archive))  # while everything runs
        assert backup.returncode == 0, backup.stdout + backup.stderr
        assert "gateway database (sqlite): 1" in backup.stdout and "prefect database (sqlite): 1" in backup.stdout
    finally:
        original.close()
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600  # it holds the secrets

    fresh = tmp_path / "restored"
    restore_env = {**cli_env(settings), "BITINGLIP_HOME": str(fresh)}
    restored = cli(restore_env, "restore", str(archive))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    for name in ("secrets.json", "admin.key", "gateway.db", "prefect/prefect.db"):
        assert stat.S_IMODE((fresh / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert json.loads((fresh / "secrets.json").read_text()) == json.loads(
        (settings.home_dir / "secrets.json").read_text()
    )
    refused = cli(restore_env, "restore", str(archive))  # the home is not empty any more
    assert refused.returncode == 1 and "not empty" in refused.stdout and "--force" in refused.stdout

    # A new platform on the restored home: its secrets come from the restored secrets.json.
    admin_key = (fresh / "admin.key").read_text().strip()
    again = Platform(
        Settings(
            home=fresh,
            gateway_port=free_port(),
            worker_port=free_port(),
            prefect_port=free_port(),
            admin_api_key=SecretStr(admin_key),
            rate_limit_per_minute=1_000_000,
        ),
        env_overrides=ONLY_EMBEDDINGS,
    )
    try:
        again.start_prefect()
        again.start_worker(wait=False)
        again.start_gateway()
        again.wait_ready(timeout=120)
        admin = again.client()
        users = {u["username"]: u for u in admin.get("/api/v1/users").json()}
        assert username in users and not users[username]["disabled"]
        carol = again.client(key=carol_key)  # the key itself still opens the door
        assert carol.get("/api/v1/auth/me").json()["username"] == username
        kept = carol.get(f"/api/v1/tasks/{job['id']}").json()
        assert kept["status"] == "completed" and kept["result"] == job["result"]
        model = admin.get(f"/api/v1/models/{EMBEDDING_MODEL}").json()
        assert model["status"] == "ready" and model["pinned"] is True
        # served from the restored store: the original home's platform is stopped
        assert carol.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "hi"}).status_code == 200
        # Prefect's database came back too: the job's task run, as the original server recorded it
        assert job["prefect_run_id"] and prefect_task_run_state(again, job["prefect_run_id"]) == "COMPLETED"
    finally:
        again.close()


# -- restores that must be refused (an archive made here from a home of plain files)


def offline_home(home: Path) -> Settings:
    """A stopped platform's home: SQLite databases with a row each, secrets, a result file."""
    (home / "prefect").mkdir(parents=True)
    for path in (home / "gateway.db", home / "prefect" / "prefect.db"):
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE t (v TEXT)")
            db.execute("INSERT INTO t VALUES (?)", (path.name,))
    (home / "secrets.json").write_text(json.dumps({"jwt_secret": "x" * 40}))
    (home / "admin.key").write_text("bl-000000000000-" + "k" * 40)
    (home / "results" / "jobs").mkdir(parents=True)
    (home / "results" / "jobs" / "r1.bin").write_bytes(b"result")
    return Settings(home=home)


def test_restore_over_a_home_needs_force_and_round_trips(tmp_path: Path) -> None:
    source = offline_home(tmp_path / "a")
    archive = tmp_path / "a.tar"
    assert cli(cli_env(source), "backup", str(archive)).returncode == 0
    target = tmp_path / "b"
    target.mkdir()
    (target / "gateway.db").write_text("something else")
    env = {**cli_env(source), "BITINGLIP_HOME": str(target)}
    refused = cli(env, "restore", str(archive))
    assert refused.returncode == 1 and "not empty" in refused.stdout
    assert (target / "gateway.db").read_text() == "something else"
    forced = cli(env, "restore", str(archive), "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    with sqlite3.connect(target / "gateway.db") as db:
        assert db.execute("SELECT v FROM t").fetchall() == [("gateway.db",)]
    assert (target / "results" / "jobs" / "r1.bin").read_bytes() == b"result"
    assert stat.S_IMODE((target / "results" / "jobs" / "r1.bin").stat().st_mode) == 0o600


def test_backup_refuses_to_write_inside_the_home(tmp_path: Path) -> None:
    source = offline_home(tmp_path / "a")
    result = cli(cli_env(source), "backup", str(tmp_path / "a" / "inside.tar"))
    assert result.returncode == 1 and "inside the home" in result.stdout


def test_a_link_planted_beside_the_archive_receives_nothing(tmp_path: Path) -> None:
    """In a shared folder another user may plant links at names a backup might write; the archive is
    written in a private scratch folder and renamed into place, so a planted link gets none of it."""
    source = offline_home(tmp_path / "a")
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    for name in (".a.tar.partial", "a.tar.partial", ".a.tar.tmp"):
        (shared / name).symlink_to(victim)
    assert cli(cli_env(source), "backup", str(shared / "a.tar")).returncode == 0
    assert victim.read_text() == "untouched"
    assert stat.S_IMODE((shared / "a.tar").stat().st_mode) == 0o600 and tarfile.is_tarfile(shared / "a.tar")


def _hostile(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    """A real archive (a manifest and databases as `backup` writes) plus one hostile member."""
    source = offline_home(tmp_path / "src")
    archive = tmp_path / "good.tar"
    assert cli(cli_env(source), "backup", str(archive)).returncode == 0
    hostile = tmp_path / "hostile.tar"
    with tarfile.open(archive) as good, tarfile.open(hostile, "w") as bad:
        for m in good.getmembers():
            bad.addfile(m, good.extractfile(m) if m.isfile() else None)
        member.size = len(data) if member.isfile() else 0
        bad.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return hostile


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, target, 0o644
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../escaped"), "not a plain relative path"),
        (_member("results/../../escaped"), "not a plain relative path"),
        (_member("/tmp/absolute-escape"), "not a plain relative path"),
        (_member("models/evil", tarfile.SYMTYPE, "/etc/passwd"), "only plain files and folders"),
        (_member("results/hard", tarfile.LNKTYPE, "secrets.json"), "only plain files and folders"),
        (_member("results/dev", tarfile.CHRTYPE), "only plain files and folders"),
        (_member("results/fifo", tarfile.FIFOTYPE), "only plain files and folders"),
        (_member(".bashrc"), "not part of a BitingLip backup"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "fifo", "unknown-top"],
)
def test_hostile_archives_are_refused_before_anything_is_written(
    tmp_path: Path, member: tarfile.TarInfo, why: str
) -> None:
    archive = _hostile(tmp_path, member)
    target = tmp_path / "fresh" / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITINGLIP_", "PREFECT_"))}
    result = cli({**env, "BITINGLIP_HOME": str(target)}, "restore", str(archive))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "restore refused" in result.stdout and why in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not target.exists() or list(target.iterdir()) == []
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/absolute-escape").exists()
    leftovers = [p.name for p in (tmp_path / "fresh").iterdir()] if (tmp_path / "fresh").exists() else []
    assert [n for n in leftovers if n.startswith(".restore-")] == []


def test_not_an_archive_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00not a tar" * 100)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITINGLIP_", "PREFECT_"))}
    result = cli({**env, "BITINGLIP_HOME": str(tmp_path / "h")}, "restore", str(junk))
    assert result.returncode == 1 and "restore refused" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
