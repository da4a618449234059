"""Shared by the security suites: the error envelope check, two tenants, settings with strong secrets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bitinglip.config import Settings
from bitinglip.home_secrets import SECRETS
from tests.platform_harness import Platform


def strong_settings(**overrides: Any) -> Settings:
    """Settings with freshly generated secrets (as a first start makes them), for building apps in-process."""
    secrets = {name: SecretStr(make()) for name, (_, make) in SECRETS.items()}
    return Settings(**{**secrets, **overrides})


def envelope(response: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if type_ is not None:
        assert error["type"] == type_, error
    return dict(error)


@pytest.fixture(scope="module")
def tenants(platform: Platform) -> Iterator[dict[str, str]]:
    """Two users with a key each, made by the admin through the API."""
    admin = platform.client()
    suffix = uuid.uuid4().hex[:6]
    keys = {}
    for name in ("alice", "bob"):
        username = f"{name}-{suffix}"
        assert admin.post("/api/v1/users", json={"username": username}).status_code == 201
        created = admin.post("/api/v1/auth/keys", json={"username": username, "name": "test"})
        assert created.status_code == 201, created.text
        keys[name] = created.json()["key"]
        keys[f"{name}_user"] = username
    yield keys
