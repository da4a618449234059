"""Which failed job task runs Prefect retries: the condition reads the real Failed state, as Prefect's
async task engine hands it over (a sync `state.result()` there returned a coroutine, so nothing was retried)."""

from __future__ import annotations

import asyncio

from prefect.states import exception_to_failed_state

from bitinglip.errors import InvalidRequest
from bitinglip.worker.jobs import TransientJobError
from flows.inference import _transient


def _retried(exc: BaseException) -> bool:
    async def check() -> bool:
        return await _transient(None, None, await exception_to_failed_state(exc))

    return asyncio.run(check())


def test_only_a_transient_failure_is_retried() -> None:
    assert _retried(TransientJobError("the worker's engine restarted"))
    assert not _retried(InvalidRequest("max_tokens too large", param="max_tokens"))
    assert not _retried(RuntimeError("a bug"))
