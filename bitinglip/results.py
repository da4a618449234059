"""The result store: images and other job outputs under one fsspec URL (a local folder by default,
`s3://bucket/prefix` via s3fs). Keys are relative paths, checked so they cannot leave the store."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import fsspec

from bitinglip.config import Settings
from bitinglip.errors import InvalidRequest, NotFound
from bitinglip.storage import s3_options

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key.split("/"):
        raise InvalidRequest(f"invalid result path {key!r}", param="path")
    return key


class ResultStore:
    def __init__(self, settings: Settings) -> None:
        url = settings.results_url or f"file://{settings.results_dir}"
        protocol, _, root = url.partition("://")
        options: dict[str, Any] = s3_options(settings) if protocol == "s3" else {}
        self.fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
        self.protocol = protocol
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        if protocol == "file":
            os.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> str:
        """Whole-object writes: an S3 PUT is atomic; locally we write a temp file and rename it."""
        path = self._path(key)
        if self.protocol == "file":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        return key

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            data: bytes = self.fs.cat_file(path)
        except FileNotFoundError as exc:
            raise NotFound(f"result {key!r} not found", param="path") from exc
        return data

    def full_url(self, key: str) -> str:
        return f"{self.url}/{check_key(key)}"
