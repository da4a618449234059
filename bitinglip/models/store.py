"""The model store: `ROOT/NAME/REVISION/` folders, each with a manifest of sha256 per file.

Installs are staged in `ROOT/.staging/` (same filesystem) and moved in with one rename, so a reader
either sees a complete, verified model or nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from bitinglip.errors import InvalidRequest, ModelNotFound
from bitinglip.models.backends import Backend
from bitinglip.models.catalog import Task
from bitinglip.models.names import check_part, split_model_id

MANIFEST = "bitinglip-manifest.json"


def not_installed(model_id: str) -> ModelNotFound:
    """The one answer for a model that is missing, or that the caller may not use (access.py)."""
    return ModelNotFound(f"model {model_id!r} is not installed", param="model")


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    size: int
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    revision: str
    task: Task
    source: str
    files: dict[str, FileEntry]
    converted_from: str | None = None
    backend: Backend = "transformers"  # what serves it; manifests from before backends read as this
    installed_at: datetime

    @property
    def id(self) -> str:
        return f"{self.name}@{self.revision}"

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def sha256(self) -> str:
        """One digest for the whole model: over the sorted per-file digests."""
        joined = "\n".join(f"{p} {f.sha256}" for p, f in sorted(self.files.items()))
        return hashlib.sha256(joined.encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, FileEntry]:
    return {
        p.relative_to(root).as_posix(): FileEntry(size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._parsed: dict[Path, tuple[tuple[int, int, int], Manifest]] = {}  # shared, so Manifest is frozen

    def path_for(self, name: str, revision: str) -> Path:
        return self.root / check_part(name, "model") / check_part(revision, "revision")

    def manifest(self, name: str, revision: str) -> Manifest | None:
        return self._read(self.path_for(name, revision) / MANIFEST)

    def installed(self) -> list[Manifest]:
        if not self.root.is_dir():
            return []
        found = []
        for file in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            try:
                manifest = self._read(file)
            except ValueError:
                continue  # not ours or damaged: never served
            if manifest is not None:
                found.append(manifest)
        return found

    def _read(self, file: Path) -> Manifest | None:
        """Parsed again only when the file changed (its inode, size or mtime): every request and job
        resolves its model here, and reading and parsing the file each time was ~15% of a worker's
        event loop under async jobs (docs/architecture.md §3.3)."""
        try:
            info = file.stat()
        except OSError:
            self._parsed.pop(file, None)
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if (cached := self._parsed.get(file)) is not None and cached[0] == seen:
            return cached[1]
        manifest = Manifest.model_validate_json(file.read_text())
        self._parsed[file] = (seen, manifest)
        return manifest

    def resolve(self, model_id: str) -> Manifest:
        """NAME@REVISION, or NAME for its most recently installed revision."""
        name, revision = split_model_id(model_id)
        if revision is not None:
            found = self.manifest(name, revision)
        else:
            candidates = [m for m in self.installed() if m.name == name]
            found = max(candidates, key=lambda m: m.installed_at) if candidates else None
        if found is None:
            raise not_installed(model_id)
        return found

    def path(self, manifest: Manifest) -> Path:
        return self.path_for(manifest.name, manifest.revision)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A scratch folder on the store's filesystem, removed whatever happens."""
        folder = self.root / ".staging" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def install(
        self,
        staged: Path,
        *,
        name: str,
        revision: str,
        task: Task,
        source: str,
        converted_from: str | None = None,
        backend: Backend = "transformers",
    ) -> Manifest:
        files = hash_tree(staged)
        if not files:
            raise InvalidRequest(f"source {source!r} produced no files", param="source")
        manifest = Manifest(
            name=name,
            revision=revision,
            task=task,
            source=source,
            files=files,
            converted_from=converted_from,
            backend=backend,
            installed_at=datetime.now(UTC),
        )
        (staged / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        target = self.path_for(name, revision)
        target.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if target.exists():
            old = self.root / ".staging" / f"{uuid.uuid4().hex}.old"
            os.rename(target, old)
        os.rename(staged, target)  # the staging context's cleanup then finds nothing to remove
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest

    def verify(self, manifest: Manifest) -> list[str]:
        """Paths whose size or sha256 no longer match the manifest."""
        root = self.path(manifest)
        bad = []
        for rel, entry in manifest.files.items():
            file = root / rel
            if not file.is_file() or file.stat().st_size != entry.size or sha256_file(file) != entry.sha256:
                bad.append(rel)
        return bad

    def remove(self, name: str, revision: str) -> None:
        target = self.path_for(name, revision)
        if not target.exists():
            raise ModelNotFound(f"model {name}@{revision} is not installed", param="model")
        trash = self.root / ".staging" / f"{uuid.uuid4().hex}.rm"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
        if target.parent.exists() and not any(target.parent.iterdir()):
            target.parent.rmdir()
