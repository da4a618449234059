"""Errors that cross process boundaries, and the one JSON envelope they travel in.

The envelope is OpenAI's (`{"error": {"message", "type", "param", "code"}}`) on every route, so the
openai SDK raises its proper exception classes and REST clients parse one shape.
"""

from __future__ import annotations

from typing import Any


class BitingLipError(Exception):
    status_code = 500
    type = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def headers(self) -> dict[str, str]:
        headers = dict(getattr(self, "extra_headers", {}))
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        return headers


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class InvalidRequest(BitingLipError):
    status_code = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(BitingLipError):
    """No credentials, or ones that are wrong, expired or revoked (the openai SDK's AuthenticationError)."""

    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"
    extra_headers = {"WWW-Authenticate": "Bearer"}


class PermissionDenied(BitingLipError):
    status_code = 403
    type = "permission_error"
    code = "admin_only"


class RateLimited(BitingLipError):
    """Over a rate limit or quota: 429 with Retry-After and the limit in X-RateLimit-* headers."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: int, reset_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code, retry_after=reset_after)
        self.extra_headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(max(1, round(reset_after))),
        }


class NotFound(BitingLipError):
    status_code = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(BitingLipError):
    status_code = 409
    type = "conflict_error"
    code = "conflict"


class Overloaded(BitingLipError):
    """A bounded queue is full: the caller should retry later, not wait forever."""

    status_code = 503
    type = "overloaded_error"
    code = "queue_full"


class NoRoomToLoad(Overloaded):
    """A worker cannot load a model within its memory budget (or model count) because what holds the
    memory is pinned or busy. An Overloaded: busy models go idle, so an async job re-queues and retries."""

    code = "memory_budget"


class ServiceUnavailable(BitingLipError):
    status_code = 503
    type = "service_unavailable"
    code = "unavailable"


class RemoteError(BitingLipError):
    """An error answered by another of our processes, relayed with its status and envelope."""

    def __init__(self, status_code: int, body: dict[str, Any], retry_after: float | None = None) -> None:
        raw = body.get("error")
        err: dict[str, Any] = raw if isinstance(raw, dict) else {}
        super().__init__(
            str(err.get("message") or "upstream error"),
            param=err.get("param"),
            code=err.get("code"),
            retry_after=retry_after,
            status_code=status_code,
        )
        self.type = str(err.get("type") or "upstream_error")


INTERNAL_ERROR_MESSAGE = "internal error; the platform's logs have the details"


def error_record(exc: BaseException, type_: str = "internal_error") -> dict[str, Any]:
    """What a job or batch records about the exception that ended it: our envelope's fields, or, for
    an unexpected one, a fixed message. The exception's own text stays in the logs (where it is
    redacted): it can quote internals, paths, other requests' data or a library's view of a secret,
    and a job's error is shown to its owner."""
    if isinstance(exc, BitingLipError):
        record: dict[str, Any] = exc.body()["error"]
        return record
    return error_body(INTERNAL_ERROR_MESSAGE, type_, "internal_error")["error"]
