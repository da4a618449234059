"""The quiet uvicorn server: it serves, it looks for a stop about once a second when idle, a stop wakes
it at once, and `uvicorn.run` uses it once installed (how Prefect's server gets it)."""

from __future__ import annotations

import asyncio
import importlib
import signal
import threading
import time

import httpx
import pytest
import uvicorn
import uvloop
from fastapi import FastAPI

from bitinglip import quiet_server
from bitinglip.quiet_server import QuietServer
from tests.platform_harness import free_port


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


class Counting(QuietServer):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        return await super().on_tick(counter)


def _serve_in_thread(server: QuietServer, uv: bool = True) -> threading.Thread:
    """On uvloop, as uvicorn[standard] runs (`uv=False`: asyncio's own loop). Off the main thread
    uvicorn installs no signal handlers: the test calls `handle_exit` itself, as the handler would."""

    def serve() -> None:
        loop = uvloop.new_event_loop() if uv else asyncio.new_event_loop()
        try:
            loop.run_until_complete(server.serve())
        finally:
            loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    return thread


def test_it_serves_looks_seldom_when_idle_and_a_stop_wakes_it_at_once() -> None:
    port = free_port()
    server = Counting(uvicorn.Config(_app(), host="127.0.0.1", port=port, log_config=None))
    server.look_s = 60.0  # a stop that waited for the next look would take a minute
    thread = _serve_in_thread(server)
    assert httpx.get(f"http://127.0.0.1:{port}/ping").json() == {"pong": "yes"}
    ticks_before = server.ticks
    time.sleep(1.5)
    assert server.ticks == ticks_before  # uvicorn's own loop would have looked 15 times
    asked = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert time.monotonic() - asked < 30  # woken, not the 60 s look
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2)


def test_idle_it_still_looks_about_once_a_second() -> None:
    """Looks go on without a signal (the Date header, and a `should_exit` set without `handle_exit`)."""
    server = Counting(uvicorn.Config(_app(), host="127.0.0.1", port=free_port(), log_config=None))
    thread = _serve_in_thread(server)
    before = server.ticks
    time.sleep(2.5)
    looks = server.ticks - before
    server.should_exit = True  # noticed at the next look, with no wake-up
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert 1 <= looks <= 4, looks  # uvicorn's own loop: 25


def test_on_asyncios_own_loop_it_keeps_uvicorns_look() -> None:
    """There a signal landing on another thread would not wake the loop: looks stay ten a second."""
    server = Counting(uvicorn.Config(_app(), host="127.0.0.1", port=free_port(), log_config=None))
    thread = _serve_in_thread(server, uv=False)
    before = server.ticks
    time.sleep(1.0)
    looks = server.ticks - before
    server.handle_exit(signal.SIGTERM, None)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert looks >= 5, looks


def test_a_stop_asked_before_serving_ends_it_without_a_loop() -> None:
    server = QuietServer(uvicorn.Config(_app(), host="127.0.0.1", port=free_port(), log_config=None))
    server.handle_exit(signal.SIGTERM, None)  # no loop yet: nothing to wake, and nothing fails
    thread = threading.Thread(target=lambda: uvloop.run(server.serve()), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and server.should_exit


def test_install_makes_uvicorn_run_serve_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("uvicorn.main")  # `uvicorn.main` itself is the CLI command
    monkeypatch.setattr(module, "Server", module.Server)  # restored after the test
    quiet_server.install()
    built: list[type] = []

    def record(self: uvicorn.Server) -> None:
        built.append(type(self))
        self.started = True  # what a served run leaves; uvicorn.run exits with an error otherwise

    monkeypatch.setattr(QuietServer, "run", record)
    uvicorn.run(_app(), host="127.0.0.1", port=free_port(), log_config=None)
    assert built == [QuietServer]
