"""fsspec filesystems built from settings (S3 endpoint and credentials live in one place)."""

from __future__ import annotations

from typing import Any

from bitinglip.config import Settings


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
