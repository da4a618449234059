"""fsspec filesystems built from settings (S3 endpoint and credentials live in one place), and the
whole-object reads and atomic writes that results and batch files need on local disk or S3."""

from __future__ import annotations

import os
import uuid
from typing import Any

import fsspec

from bitinglip.config import Settings
from bitinglip.crypto import Cipher, is_sealed


def s3_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.s3_key:
        options["key"] = settings.s3_key
        options["secret"] = settings.s3_secret
    if settings.s3_endpoint_url:
        options["client_kwargs"] = {"endpoint_url": settings.s3_endpoint_url}
    return options


def s3_filesystem(settings: Settings) -> Any:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **s3_options(settings))


def filesystem(settings: Settings, url: str) -> tuple[Any, str]:
    """(filesystem, path) for a local path, file:// URL or s3:// URL."""
    protocol, sep, rest = url.partition("://")
    if not sep:
        protocol, rest = "file", os.path.abspath(url)
    options: dict[str, Any] = s3_options(settings) if protocol == "s3" else {}
    return fsspec.filesystem(protocol, skip_instance_cache=True, **options), rest


def write_atomic(fs: Any, path: str, data: bytes) -> None:
    """Readers see the old object or the whole new one: an S3 PUT is atomic; locally we write a
    temporary file beside the target and rename it."""
    if getattr(fs, "protocol", None) in ("file", ("file", "local")):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        fs.pipe_file(path, data)


def read_url(settings: Settings, url: str) -> bytes:
    """An object's content; one the result store sealed (a batch input read by its URL) is opened
    with the configured keys, so readers outside the store get plaintext too."""
    fs, path = filesystem(settings, url)
    data: bytes = fs.cat_file(path)
    return Cipher.from_settings(settings).open(data) if is_sealed(data) else data


def write_url(settings: Settings, url: str, data: bytes) -> None:
    fs, path = filesystem(settings, url)
    write_atomic(fs, path, data)


def expand(settings: Settings, pattern: str) -> list[str]:
    """URLs matching a glob pattern (a plain path matches itself when it exists), sorted."""
    fs, path = filesystem(settings, pattern)
    protocol, sep, _ = pattern.partition("://")
    prefix = f"{protocol}://" if sep else ""
    return sorted(f"{prefix}{p}" if prefix and not p.startswith(prefix) else p for p in fs.glob(path))
