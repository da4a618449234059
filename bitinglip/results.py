"""The result store: images and other job outputs under one fsspec URL (a local folder by default,
`s3://bucket/prefix` via s3fs). Keys are relative paths, checked so they cannot leave the store."""

from __future__ import annotations

import os
import re

from bitinglip.config import Settings
from bitinglip.errors import InvalidRequest, NotFound
from bitinglip.storage import filesystem, write_atomic

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key.split("/"):
        raise InvalidRequest(f"invalid result path {key!r}", param="path")
    return key


class ResultStore:
    def __init__(self, settings: Settings) -> None:
        url = settings.results_url or f"file://{settings.results_dir}"
        self.fs, root = filesystem(settings, url)
        self.protocol = url.partition("://")[0]
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        if self.protocol == "file":
            os.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> str:
        write_atomic(self.fs, self._path(key), data)
        return key

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            data: bytes = self.fs.cat_file(path)
        except FileNotFoundError as exc:
            raise NotFound(f"result {key!r} not found", param="path") from exc
        return data

    def full_url(self, key: str) -> str:
        return f"{self.url}/{check_key(key)}"
