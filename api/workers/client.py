"""HTTP client from the gateway to model workers: keep-alive, errors relayed in our envelope, answers
validated into the typed outputs (`bitinglip.outputs`) as they arrive."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from bitinglip.db.workers import WorkerInfo
from bitinglip.errors import RemoteError, ServiceUnavailable
from bitinglip.http import REQUEST_ID, worker_auth_header
from bitinglip.outputs import STREAM_EVENT, TextStreamEvent

M = TypeVar("M", bound=BaseModel)
TOKENS_READ_TIMEOUT_S = 30.0  # the worker sends a keep-alive line every 5 s while a job is quiet


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    await response.aread()
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:200] or "worker error", "type": "upstream_error"}}
    raise RemoteError(response.status_code, body, _retry_after(response))


def _malformed(worker: WorkerInfo) -> RemoteError:
    """A worker answer that does not fit its shape (a version skew): the caller's 502, never a 500."""
    message = f"model worker {worker.id} sent a malformed answer"
    return RemoteError(502, {"error": {"message": message, "type": "upstream_error"}})


def _forwarded() -> dict[str, str]:
    request_id = REQUEST_ID.get()
    return {"X-Request-ID": request_id} if request_id else {}


class WorkerClient:
    def __init__(self, timeout_s: float, worker_token: str) -> None:
        self._http = httpx.AsyncClient(
            headers=worker_auth_header(worker_token),
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, worker: WorkerInfo, path: str, payload: dict[str, Any], answer: type[M]) -> M:
        """The worker's answer to `payload`, as `answer`."""
        try:
            response = await self._http.post(f"{worker.url}{path}", json=payload, headers=_forwarded())
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"model worker {worker.id} unreachable", retry_after=2) from exc
        await _raise_for(response)
        try:
            return answer.model_validate_json(response.content)
        except ValidationError as exc:
            raise _malformed(worker) from exc

    async def poke_jobs(self, worker: WorkerInfo) -> None:
        """Jobs are waiting (api/workers/poke.py); the worker answers 204 at once."""
        response = await self._http.post(f"{worker.url}/internal/v1/jobs/poke", timeout=2.0)
        await _raise_for(response)

    async def stream_text(self, worker: WorkerInfo, payload: dict[str, Any]) -> AsyncGenerator[TextStreamEvent, None]:
        """Yields the worker's NDJSON events; errors before the first byte raise, later ones arrive
        as an error event."""
        try:
            async with self._http.stream(
                "POST", f"{worker.url}/internal/v1/text", json={**payload, "stream": True}, headers=_forwarded()
            ) as response:
                await _raise_for(response)
                async for line in response.aiter_lines():
                    if line:
                        try:
                            event = STREAM_EVENT.validate_json(line)
                        except ValidationError as exc:
                            raise _malformed(worker) from exc
                        yield event
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"model worker {worker.id} unreachable", retry_after=2) from exc

    async def follow_tokens(self, worker: WorkerInfo, job_id: str, after: int) -> AsyncGenerator[tuple[int, str], None]:
        """(number, piece) of a running text job's text after the `after`th, until its work ends on
        the worker; nothing when the job is not generating there (finished, or elsewhere). A worker that
        goes silent (no keep-alive line for TOKENS_READ_TIMEOUT_S) or unreachable ends it too: the
        caller reads the job's row next, which says what became of it."""
        url = f"{worker.url}/internal/v1/jobs/{quote(job_id, safe='')}/tokens"
        try:
            async with self._http.stream(
                "GET", url, params={"after": after}, timeout=httpx.Timeout(TOKENS_READ_TIMEOUT_S, connect=5.0)
            ) as response:
                if response.status_code != 200:
                    return
                async for line in response.aiter_lines():
                    piece = json.loads(line) if line else {}
                    if "n" in piece:
                        yield int(piece["n"]), str(piece["text"])
        except (httpx.TransportError, ValueError, KeyError, TypeError):
            return
