"""Prefect client settings derived from ours, for code that talks to a Prefect server from a process
whose environment was not set by `bitinglip` (tests, benchmarks, `up` itself): API URL and auth."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from bitinglip.config import Settings


def prefect_client_settings(settings: Settings) -> AbstractContextManager[Any]:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates: dict[Any, Any] = {PREFECT_API_URL: settings.prefect_api}
    if settings.prefect_auth_string is not None:
        updates[PREFECT_API_AUTH_STRING] = settings.prefect_auth_string.get_secret_value()
    return temporary_settings(updates)
