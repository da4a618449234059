"""HTTP plumbing shared by the gateway and the model worker: one error envelope for every failure."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bitinglip.errors import BitingLipError, ServiceUnavailable, error_body
from bitinglip.validation_errors import UNSUPPORTED_MEDIA_TYPE, describe, quoted

log = logging.getLogger(__name__)

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


# A plain logging logger, not structlog's: its line is queued as a record and dressed (context, time,
# rendering) on the log writer's thread, not on the event loop before every answer goes out.
access_log = logging.getLogger("bitinglip.access")

REQUEST_ID_HEADER = "X-Request-ID"
# The request's id, set by CorrelationIdMiddleware (None outside a request); readers call `.get()`.
REQUEST_ID = correlation_id
# A caller's id goes into every log line and the worker's headers as given, so only a plain token is
# kept: no spaces, quotes or control characters that could forge a `key=value` pair or a log line.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:;@/+=-]{1,128}")


def is_plain_request_id(value: str) -> bool:
    return _PLAIN_ID.fullmatch(value) is not None


def install_request_ids(app: FastAPI, observe: Callable[[Scope, int, float], None] | None = None) -> None:
    """One id per request, taken from `X-Request-ID` if it is a plain token or made here (32 hex),
    echoed in the response and passed on to model workers, so one id finds a request everywhere.
    Added last, so outermost: even a refusal by another middleware carries the id."""
    app.add_middleware(AccessLog, observe=observe)
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name=REQUEST_ID_HEADER,
        validator=is_plain_request_id,
        generator=lambda: uuid.uuid4().hex,
    )


class AccessLog:
    """Binds the request id into every log line of the request and writes the access log line
    (method, path, status, duration); `observe` gets the same, e.g. the gateway's request metrics."""

    def __init__(self, app: ASGIApp, observe: Callable[[Scope, int, float], None] | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.bind_contextvars(request_id=REQUEST_ID.get())
        status = 500
        started = time.perf_counter()

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            elapsed = time.perf_counter() - started
            if self.observe is not None:
                self.observe(scope, status, elapsed)
            if scope.get("path") not in ("/health", "/metrics/", "/metrics"):
                fields = {"method": scope.get("method"), "path": scope.get("path"), "status": status}
                access_log.info("request", extra={**fields, "ms": round(elapsed * 1000, 1)})
            structlog.contextvars.unbind_contextvars("request_id")


def worker_auth_header(token: str) -> dict[str, str]:
    """What every call to a model worker carries (Prometheus sends the same from a credentials_file)."""
    return {"Authorization": f"Bearer {token}"}


class WorkerTokenRequired:
    """ASGI middleware of the model worker: every path but /health needs the shared worker token,
    compared in constant time (docs/security.md, "Ports")."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = frozenset({"/health"})) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            body = error_body("missing or wrong worker token", "authentication_error", "invalid_worker_token")
            await JSONResponse(body, 401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: refuses a body over `max_bytes` with 413, by its declared length before
    reading it, and a chunked one (no length) as soon as the bytes read pass the limit. In the second
    case the app is already reading: whatever it answers to the aborted read (FastAPI makes it a 400,
    "error parsing the body") is discarded and the 413 goes out instead."""

    def __init__(self, app: ASGIApp, max_bytes: int, by_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.by_path = by_path or {}  # exact paths with their own limit (file uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        seen, too_large, started = 0, False, False

        async def counting_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                too_large = True
                raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's answer to the aborted read; ours replaces it below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        body = error_body(f"request body is larger than {limit} bytes", "invalid_request_error", "too_large")
        await JSONResponse(body, 413)(scope, receive, send)


class _TooLarge(Exception):
    pass


class UnexpectedErrors:
    """ASGI middleware, innermost: an exception no handler knows becomes the 500 envelope here and is
    logged once, as a bounded traceback without locals, rendered off the event loop (bitinglip/logs.py).
    Starlette's own last-resort handler would re-raise it, so uvicorn would log it a second time and
    drop the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            if not started:  # a stream that already began just ends; its status is out
                await JSONResponse(internal_error_body(), 500)(scope, receive, send)


def internal_error_body() -> dict[str, Any]:
    """The one answer to an unexpected error: the request id to quote, nothing from the exception."""
    request_id = REQUEST_ID.get()
    suffix = f" (request id {request_id})" if request_id else ""
    return error_body(f"internal server error{suffix}", "internal_error", "internal_error")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The one error envelope (OpenAI's), documented on every route so clients and fuzzers know it."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request"),
        (401, "Missing, invalid, expired or revoked credentials"),
        (403, "Admins only"),
        (404, "Not found (or not yours)"),
        (409, "Conflict"),
        (413, "Request body too large"),
        (415, "The body is not sent as JSON (`Content-Type: application/json`)"),
        (422, "Invalid parameters"),
        (429, "Rate limit or quota exceeded"),
        (503, "Overloaded or unavailable; retry after Retry-After"),
    )
}


# A body that never became a JSON object is a 400 (415 for one sent as something else than JSON) on
# every route; invalid fields are the route's validation status (422 native, 400 OpenAI).
_BODY_STATUSES = {"invalid_json": 400, "invalid_body": 400, UNSUPPORTED_MEDIA_TYPE: 415}
_HTTP_CODES = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}


def _http_message(request: Request, exc: StarletteHTTPException) -> str:
    """Starlette's and FastAPI's stock replies ("Not Found", "There was an error parsing the body")
    as sentences that say what to do; a detail written by our code is kept as it is."""
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        return f"There is no route `{quoted(request.url.path)}`; the API's routes are listed at /docs."
    if exc.status_code == 405 and detail == "Method Not Allowed":
        allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
        where = f"{quoted(request.method, 16)} is not allowed on `{quoted(request.url.path)}`"
        return where + (f"; use {allowed}." if allowed else ".")
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        return "The request body could not be read: send UTF-8 encoded JSON with `Content-Type: application/json`."
    return detail


def install_error_handlers(app: FastAPI, validation_status: int = 422) -> None:
    @app.exception_handler(BitingLipError)
    async def _ours(_: Request, exc: BitingLipError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = describe(exc.errors(), exc.body, request.headers.get("content-type"))
        status = _BODY_STATUSES.get(code) or (400 if request.url.path.startswith("/v1/") else validation_status)
        return JSONResponse(error_body(message, "invalid_request_error", code, param), status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _STATUS_TYPES.get(exc.status_code, "api_error")
        return JSONResponse(
            error_body(_http_message(request, exc), type_, _HTTP_CODES.get(exc.status_code)),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_away(request: Request, exc: Exception) -> JSONResponse:
        """The shared DB is briefly unreachable (failover, restart): tell clients to come back; the
        connection pool recovers by itself (pre-ping) once it is back."""
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        error = ServiceUnavailable("the database is unavailable; retry shortly", retry_after=2, code="database")
        return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        """Only errors raised outside UnexpectedErrors (in an outer middleware) get here."""
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(internal_error_body(), 500)

    app.add_middleware(UnexpectedErrors)  # first added, so innermost: inside the request id and metrics
