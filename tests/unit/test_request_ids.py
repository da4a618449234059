"""Request ids (bitinglip/http.py): a caller's plain id is kept and echoed; anything else (too long,
control characters, a newline, spaces that could forge `key=value` pairs) is replaced by a fresh id
before it reaches the logs, the worker or the error envelope."""

from __future__ import annotations

import json
import logging
import re

import pytest
import structlog
from fastapi import FastAPI

from bitinglip.http import REQUEST_ID, install_error_handlers, install_request_ids
from tests.unit.asgi import call

FRESH = re.compile(r"[0-9a-f]{32}")


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_request_ids(app)

    @app.post("/seen")
    async def seen() -> dict[str, str | None]:
        logged = structlog.contextvars.get_contextvars().get("request_id")
        return {"id": REQUEST_ID.get(), "logged": logged}

    @app.post("/boom")
    async def boom() -> None:
        raise RuntimeError("engine broke")

    return app


@pytest.mark.parametrize("given", ["req-abc-123", "6f1c1d3e-6a3b-4f0e-9a57-1c7e0a2b9d44", "Root=1-5759e988;Sampled=1"])
async def test_a_plain_id_is_kept_echoed_and_bound_to_the_logs(given: str) -> None:
    status, headers, body, _ = await call(_app(), "/seen", [(b"x-request-id", given.encode())])
    assert status == 200 and headers["x-request-id"] == given
    assert json.loads(body) == {"id": given, "logged": given}


@pytest.mark.parametrize(
    "hostile",
    [
        b"a" * 129,
        b"req-1\nlevel=error event=forged",
        b"req-1\r\nX-Injected: 1",
        b"req-\x1b[31mred",
        b"req-1 status=200",
        b'"quoted"',
        b"caf\xe9",
        b"",
    ],
)
async def test_any_other_id_is_replaced_and_never_logged_as_given(
    hostile: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status, headers, body, _ = await call(_app(), "/seen", [(b"x-request-id", hostile)])
    fresh = headers["x-request-id"]
    assert status == 200 and FRESH.fullmatch(fresh)
    assert json.loads(body) == {"id": fresh, "logged": fresh}  # what the logs and the worker get
    if hostile:
        assert hostile.decode("latin-1") not in caplog.text
        assert fresh in caplog.text  # the library's warning names the replacement only


async def test_an_unexpected_error_quotes_the_id_and_nothing_of_the_exception() -> None:
    status, headers, body, _ = await call(_app(), "/boom", [(b"x-request-id", b"req-boom-1")])
    assert status == 500 and headers["x-request-id"] == "req-boom-1"
    message = json.loads(body)["error"]["message"]
    assert message == "internal server error (request id req-boom-1)"
