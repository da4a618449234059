"""`bitinglip backup` / `restore`: the state that matters in one tar archive, taken while the
platform runs, restorable into a fresh home.

What goes in: the gateway database (users, API keys, jobs, files, batches, the model registry) and
Prefect's database, each copied consistently while in use (SQLite's online backup API; PostgreSQL
through `pg_dump --format=custom`, restored with `pg_restore`); the model store (installed models
only, never a half-staged install); local results (job results, uploads, batch outputs, Prefect's
result storage); the secrets (`secrets.json`, `admin.key`). Not in it: logs, the pidfile, results
on S3 (back the bucket up with S3's tools), and settings given through the environment (the
results encryption keys among them: keep them, or sealed results cannot be opened).

The archive holds secrets, so it is written 0600; restored files are 0600 and folders 0700, as the
home's own are. A restore reads only plain files and folders at known places: links, devices,
absolute or `..` paths are refused before anything is written.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy.engine import make_url

from bitinglip.config import Settings
from bitinglip.errors import BitingLipError
from bitinglip.models.store import ModelStore
from bitinglip.pidfile import running

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# archive name -> where it goes under the home (files) or is handled specially (databases)
SECRET_FILES = ("secrets.json", "admin.key")
GATEWAY_SQLITE, GATEWAY_PGDUMP = "db/gateway.sqlite", "db/gateway.pgdump"
PREFECT_SQLITE, PREFECT_PGDUMP = "db/prefect.sqlite", "db/prefect.pgdump"
TREES = ("models", "results")  # folders copied file by file
ALLOWED_TOP = {MANIFEST, "db", "models", "results", *SECRET_FILES}


class BackupError(BitingLipError):
    code = "backup"


@dataclass
class Report:
    path: Path
    entries: dict[str, int] = field(default_factory=dict)  # what -> files (or 1 per database)
    notes: list[str] = field(default_factory=list)


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    return Path(parsed.database or "")


def _pg(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL for pg_dump/pg_restore, its password in the environment (never in argv)."""
    parsed = make_url(url)
    env = {**os.environ}
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return plain, env


def _run(argv: list[str], env: dict[str, str]) -> None:
    try:
        subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise BackupError(f"{argv[0]} is not installed; it is needed for PostgreSQL databases") from exc
    except subprocess.CalledProcessError as exc:
        raise BackupError(f"{argv[0]} failed: {exc.stderr.strip()[-500:]}") from exc


def _copy_database(url: str, target: Path) -> str:
    """A consistent copy of a live database into `target`; returns its kind."""
    source = _sqlite_path(url)
    if source is not None:
        if not source.exists():
            raise BackupError(f"database {source} does not exist")
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages copied under SQLite's own locking: writers may go on
        finally:
            dst.close()
            src.close()
        return "sqlite"
    plain, env = _pg(url)
    _run(["pg_dump", "--format=custom", "--no-owner", f"--file={target}", f"--dbname={plain}"], env)
    return "postgresql"


def _files(root: Path) -> Iterator[Path]:
    """Plain files under root (links are not followed nor copied)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not (Path(folder) / d).is_symlink())
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _add_file(tar: tarfile.TarFile, path: Path, arcname: str) -> bool:
    try:
        with path.open("rb") as fh:
            info = tar.gettarinfo(fileobj=fh, arcname=arcname)
            info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
            tar.addfile(info, fh)
        return True
    except FileNotFoundError:  # removed while we walked (a model deleted, a result purged)
        return False


def _local_results(settings: Settings) -> Path | None:
    """The local results folder, or None when results live on S3."""
    if not settings.results_url:
        return settings.results_dir
    if settings.results_url.startswith(("file://", "/")):
        return Path(settings.results_url.removeprefix("file://"))
    return None


def _tree_sources(settings: Settings) -> dict[str, list[tuple[Path, str]]]:
    """(file, name in the archive) per tree: installed models only, local results."""
    store = ModelStore(settings.store_dir)
    models = [
        (path, str(PurePosixPath("models") / path.relative_to(settings.store_dir)))
        for manifest in store.installed()
        for path in _files(store.path(manifest))
    ]
    root = _local_results(settings)
    results = (
        [(p, str(PurePosixPath("results") / p.relative_to(root))) for p in _files(root)]
        if root is not None and root.is_dir()
        else []
    )
    return {"models": models, "results": results}


def backup(settings: Settings, target: Path) -> Report:
    """Write the archive to `target` (plain tar; gzip when it ends in .tar.gz or .tgz) atomically."""
    target = target.expanduser().resolve()
    if target.is_relative_to(settings.home_dir):
        raise BackupError("the archive cannot go inside the home it backs up")
    target.parent.mkdir(parents=True, exist_ok=True)
    report = Report(target)
    mode = "w:gz" if target.name.endswith((".tar.gz", ".tgz")) else "w"
    with tempfile.TemporaryDirectory(prefix="bitinglip-backup-", dir=target.parent) as scratch:
        # written in the private (0700) scratch folder, never at a guessable name in a shared one
        # (where a planted file or link could receive the secrets), then renamed into place
        partial = Path(scratch) / "archive.partial"
        kinds: dict[str, str] = {}
        databases: list[tuple[Path, str]] = []
        for what, url, sqlite_name, pg_name in (
            ("gateway", settings.gateway_db_url, GATEWAY_SQLITE, GATEWAY_PGDUMP),
            ("prefect", settings.prefect_env()["PREFECT_API_DATABASE_CONNECTION_URL"], PREFECT_SQLITE, PREFECT_PGDUMP),
        ):
            copy = Path(scratch) / what
            kinds[what] = _copy_database(url, copy)
            databases.append((copy, sqlite_name if kinds[what] == "sqlite" else pg_name))
            report.entries[f"{what} database ({kinds[what]})"] = 1
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode=mode) as tar:  # type: ignore[call-overload]
            manifest = {
                "format": FORMAT_VERSION,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "databases": kinds,
            }
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
            for copy, name in databases:
                _add_file(tar, copy, name)
            for name in SECRET_FILES:
                if _add_file(tar, settings.home_dir / name, name):
                    report.entries[name] = 1
                elif name == "secrets.json":
                    report.notes.append("no secrets.json in the home: its secrets come from the environment")
            for tree, sources in _tree_sources(settings).items():
                report.entries[tree] = sum(_add_file(tar, path, arcname) for path, arcname in sources)
        os.replace(partial, target)
    if settings.results_url and settings.results_url.startswith("s3://"):
        report.notes.append(f"results on {settings.results_url} are not in the archive: back the bucket up")
    if settings.results_encryption_keys:
        report.notes.append("keep BITINGLIP_RESULTS_ENCRYPTION_KEYS: sealed results need them")
    return report


def _check_member(member: tarfile.TarInfo) -> PurePosixPath:
    """Only plain files and folders, at known places, with plain relative names."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not name.parts or "\\" in member.name:
        raise BackupError(f"refusing archive member {member.name!r}: not a plain relative path")
    if not (member.isfile() or member.isdir()):
        raise BackupError(f"refusing archive member {member.name!r}: only plain files and folders are restored")
    if name.parts[0] not in ALLOWED_TOP:
        raise BackupError(f"refusing archive member {member.name!r}: not part of a BitingLip backup")
    return name


def _extract_checked(source: Path, scratch: Path) -> None:
    """Every member checked before any is written, then extracted with tarfile's `data` filter
    (which refuses the same things again, and strips special mode bits)."""
    try:
        with tarfile.open(source, mode="r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            if MANIFEST not in {m.name for m in members}:
                raise BackupError(f"{source} has no {MANIFEST}: not a BitingLip backup")
            tar.extractall(scratch, members=members, filter="data")
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{source} is not a readable archive: {exc}") from exc


def _home_in_use(home: Path) -> bool:
    return home.is_dir() and any(
        p.name not in ("up.pid", ".secrets.lock") and not p.name.startswith(".restore-") for p in home.iterdir()
    )


def restore(settings: Settings, source: Path, force: bool = False) -> Report:
    """Restore the archive into the settings' home (and their databases). A home with anything in
    it is refused unless `force`; a home a platform runs from is always refused."""
    home = settings.home_dir
    if running(settings.pid_file) is not None:
        raise BackupError(f"a platform is running from {home}: `bitinglip down` first")
    if _home_in_use(home) and not force:
        raise BackupError(f"{home} is not empty: restore into a fresh home, or pass --force to overwrite")
    report = Report(source)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    # staged inside the home (the one place the platform's user may surely write; same filesystem,
    # so files move in with a rename) and removed whatever happens
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=home) as scratch:
        _extract_checked(source, Path(scratch))
        staged = Path(scratch)
        manifest = json.loads((staged / MANIFEST).read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise BackupError(f"archive format {manifest.get('format')!r} is not {FORMAT_VERSION}")
        _restore_database(staged, GATEWAY_SQLITE, GATEWAY_PGDUMP, settings.gateway_db_url, "gateway", report)
        _restore_database(
            staged,
            PREFECT_SQLITE,
            PREFECT_PGDUMP,
            settings.prefect_env()["PREFECT_API_DATABASE_CONNECTION_URL"],
            "prefect",
            report,
        )
        for name in SECRET_FILES:
            if (staged / name).is_file():
                _place(staged / name, home / name)
                report.entries[name] = 1
        for tree in TREES:
            root = staged / tree
            if not root.is_dir():
                continue
            destination = settings.store_dir if tree == "models" else _local_results(settings)
            if destination is None:
                report.notes.append("the archive's results were not restored: this platform keeps results on S3")
                continue
            count = 0
            for path in _files(root):
                _place(path, destination / path.relative_to(root))
                count += 1
            report.entries[tree] = count
    return report


def _place(source: Path, target: Path) -> None:
    """Move a restored file into place; across filesystems (a store on another mount) as a copy."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(source, 0o600)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(source, target)


def _restore_database(staged: Path, sqlite_name: str, pg_name: str, url: str, what: str, report: Report) -> None:
    sqlite_copy, pg_copy = staged / sqlite_name, staged / pg_name
    target = _sqlite_path(url)
    if sqlite_copy.is_file():
        if target is None:
            raise BackupError(
                f"the archive holds a SQLite {what} database but this platform's is PostgreSQL: restore it "
                "with SQLite settings, then migrate"
            )
        for suffix in ("-wal", "-shm", "-journal"):  # an old WAL would be replayed over the restored file
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        _place(sqlite_copy, target)
    elif pg_copy.is_file():
        if target is not None:
            raise BackupError(
                f"the archive holds a PostgreSQL {what} database but this platform's is SQLite: set "
                f"BITINGLIP_{'DATABASE_URL' if what == 'gateway' else 'PREFECT_DATABASE_URL'} first"
            )
        from bitinglip.platform import ensure_postgres_databases

        ensure_postgres_databases(url)
        plain, env = _pg(url)
        _run(
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--exit-on-error",
                f"--dbname={plain}",
                str(pg_copy),
            ],
            env,
        )
    else:
        raise BackupError(f"the archive has no {what} database")
    report.entries[f"{what} database"] = 1


def describe(report: Report) -> list[str]:
    lines = [f"{what}: {count}" for what, count in report.entries.items()]
    return lines + [f"note: {note}" for note in report.notes]
