"""uvicorn's server, looking for a stop once a second instead of ten times.

Why: uvicorn's `Server.main_loop` sleeps 0.1 s between looks at `should_exit`. At idle those ten
wake-ups a second are most of what a quiet uvicorn process costs: a bare app idled at 0.25% of a core on
a 2-core box, against 0.04% with one look a second (docs/architecture.md §3.23); the gateway, every model
worker and Prefect's server each run one. Here the stop signal wakes the loop at once, so stopping is as
quick as before, and the Date header keeps its one-second resolution.

Only on uvloop (what `uvicorn[standard]` runs): it wakes its loop for a signal whichever thread the
kernel hands the signal to. asyncio's own loop sets no wake-up fd, so a SIGTERM delivered to another
thread (a model's compute threads) would wait for the next look: there uvicorn's 0.1 s look stays."""

from __future__ import annotations

import asyncio
import importlib
from contextlib import suppress
from types import FrameType

import uvicorn

LOOK_S = 1.0  # between looks at `should_exit` when no signal wakes the loop
UVICORN_LOOK_S = 0.1  # uvicorn's own, kept where a signal may not wake the loop
_TICKS_PER_LOOK = 10  # uvicorn's `on_tick` counts tenths of a second (Date header, notify timeouts)


class QuietServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.look_s = LOOK_S
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        look_s, ticks = (self.look_s, _TICKS_PER_LOOK) if signals_wake(self._loop) else (UVICORN_LOOK_S, 1)
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + ticks) % 864_000
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), look_s)
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's (SIGINT, SIGTERM), then a wake-up for the loop: a signal handler runs between the
        loop's steps, so the wake goes through the loop's own thread-safe call."""
        super().handle_exit(sig, frame)
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with suppress(RuntimeError):  # closed meanwhile: nothing is left to wake
                loop.call_soon_threadsafe(stop.set)


def signals_wake(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a signal wakes this loop wherever it lands (uvloop's do)."""
    return type(loop).__module__.partition(".")[0] == "uvloop"


def install() -> None:
    """`uvicorn.run`, wherever it is called in this process, serves with `QuietServer` (Prefect's
    `server start` calls it; so do our own processes)."""
    # the module itself: the package's attribute `uvicorn.main` is the CLI command of that name
    setattr(importlib.import_module("uvicorn.main"), "Server", QuietServer)  # noqa: B010 (replaced for its callers)
