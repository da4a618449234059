"""The result store: images and other job outputs under one fsspec URL (a local folder by default,
`s3://bucket/prefix` via s3fs). Keys are relative paths, checked so they cannot leave the store.

With encryption keys configured, what lands on disk or S3 is sealed (bitinglip/crypto.py) and `get`
opens it: every reader (gateway, model workers, batch flow runs) builds this store from the same
settings, so they all seal and open the same way."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bitinglip.config import Settings
from bitinglip.crypto import Cipher
from bitinglip.errors import InvalidRequest, NotFound
from bitinglip.storage import filesystem, write_atomic

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
OWN_PREFIXES = ("images/", "jobs/", "files/", "batches/")  # ours to seal; prefect/ holds Prefect's cache records


def check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key.split("/"):
        raise InvalidRequest(f"invalid result path {key!r}", param="path")
    return key


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: datetime


class ResultStore:
    def __init__(self, settings: Settings, cipher: Cipher | None = None) -> None:
        url = settings.results_url or f"file://{settings.results_dir}"
        self.fs, root = filesystem(settings, url)
        self.protocol = url.partition("://")[0]
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        self.cipher = cipher or Cipher.from_settings(settings)
        if self.protocol == "file":
            os.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> str:
        write_atomic(self.fs, self._path(key), self.cipher.seal(data))
        return key

    def delete(self, key: str) -> bool:
        path = self._path(key)
        if not self.fs.exists(path):
            return False
        self.fs.rm_file(path)
        return True

    def get(self, key: str) -> bytes:
        return self.cipher.open(self.get_stored(key))

    def get_stored(self, key: str) -> bytes:
        """The bytes as they lie on disk or S3 (ciphertext when sealed): for tests and re-encryption."""
        path = self._path(key)
        try:
            data: bytes = self.fs.cat_file(path)
        except FileNotFoundError as exc:
            raise NotFound(f"result {key!r} not found", param="path") from exc
        return data

    def full_url(self, key: str) -> str:
        return f"{self.url}/{check_key(key)}"

    # -- lifecycle: retention and key rotation

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under `prefix` (a folder-like key ending in /), with its modification time."""
        base = self._path(prefix.rstrip("/"))
        self.fs.invalidate_cache()
        try:
            found: dict[str, dict[str, Any]] = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            if info.get("type", "file") != "file" or path.endswith(".tmp"):
                continue
            yield StoredObject(path.removeprefix(f"{self.root}/"), _modified(info))

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under `prefix`; returns how many there were."""
        return self.delete_objects([obj.key for obj in self.objects(prefix)])

    def delete_objects(self, keys: list[str]) -> int:
        """Remove these objects (and, on local disk, the folders they leave empty); returns how many."""
        removed = sum(self.delete(key) for key in keys)
        if self.protocol == "file":
            for folder in sorted({os.path.dirname(self._path(key)) for key in keys}, key=len, reverse=True):
                while folder.startswith(f"{self.root}/") and os.path.isdir(folder) and not os.listdir(folder):
                    os.rmdir(folder)
                    folder = os.path.dirname(folder)
        return removed

    def reseal(self, key: str) -> bool:
        """Rewrite one object under the newest key (or seal a plaintext one); False when nothing changed."""
        stored = self.get_stored(key)
        resealed = self.cipher.reseal(stored)
        if resealed is None:
            return False
        write_atomic(self.fs, self._path(key), resealed)
        return True


def _modified(info: dict[str, Any]) -> datetime:
    """fsspec reports S3 objects' LastModified as a datetime and local files' mtime as seconds."""
    value = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return datetime.now(UTC)  # unknown: treat as new, so nothing is purged by mistake
