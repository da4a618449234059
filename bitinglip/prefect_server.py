"""`python -m bitinglip.prefect_server [--queue-poll-s S] [--pubsub-wait-s W] [--quiet-loop] <prefect server
start arguments>`: Prefect's own server command, with its in-process task queue (docket) looking for due
work every S seconds instead of every 250 ms, reading its in-memory pub/sub in waits of W seconds instead
of 0.1 s, and uvicorn looking for a stop once a second instead of ten times (`bitinglip.quiet_server`).

Why: these wake-ups are most of what an idle Prefect 3.9 server spends (docket's look alone was 0.7 of
its 1.8% of a core, docs/architecture.md §3.23), and Prefect builds docket's `Worker` with the library's
defaults and no setting. The queue only carries housekeeping (late runs, lease and log clean-up,
cancelling child runs), for which a second or two is nothing. The server runs in this process (`prefect
server start` serves in the foreground), so what is adjusted here is what it uses. If a release moves
one of these names, the server starts with that part unchanged and says so in its log."""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import logging
import math
import queue
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitinglip.config import Settings

log = logging.getLogger(__name__)

# How often docket looks for due work on a lean server (its default: 250 ms).
LEAN_QUEUE_POLL_S = 2.0
# How long one read of docket's in-memory pub/sub waits for a message (burner_redis: 0.1 s).
LEAN_PUBSUB_WAIT_S = 1.0


def command(settings: Settings, host: str, port: int) -> list[str]:
    """The argv that runs Prefect's server for this platform."""
    lean = (
        ["--queue-poll-s", f"{LEAN_QUEUE_POLL_S:g}", "--pubsub-wait-s", f"{LEAN_PUBSUB_WAIT_S:g}", "--quiet-loop"]
        if settings.prefect_lean
        else []
    )
    return [sys.executable, "-m", "bitinglip.prefect_server", *lean, "start", "--host", host, "--port", str(port)]


def relax_task_queue(poll_s: float) -> bool:
    """Docket's worker, as Prefect's server builds it, with `poll_s` for its due-work look; False if this
    Prefect or docket has no such hook (the server then runs with its defaults)."""
    try:
        from prefect.server.api import background_workers
    except ImportError:
        return False
    worker = getattr(background_workers, "Worker", None)
    if worker is None:
        return False
    try:
        accepted = inspect.signature(worker).parameters.keys()
    except (TypeError, ValueError):
        return False
    if not {"minimum_check_interval", "scheduling_resolution"} <= accepted:
        return False  # a docket that names them otherwise: its server must still start
    interval = timedelta(seconds=poll_s)
    relaxed = functools.partial(worker, minimum_check_interval=interval, scheduling_resolution=interval)
    setattr(background_workers, "Worker", relaxed)  # noqa: B010 (a module's name, replaced for its callers)
    return True


def relax_pubsub_reads(wait_s: float) -> bool:
    """docket's in-memory Redis (burner_redis: what a server without Redis runs) reads its pub/sub
    queue through a worker thread in 0.1 s slices, and docket's cancellation listener asks for 0.1 s
    reads in a loop: ten thread hops a second for as long as the server runs, most of what an idle
    server spends once the task queue's look is relaxed (docs/architecture.md §3.23). Here a blocking
    read waits up to `wait_s` per hop, short timeouts included: a message still returns the moment it
    arrives, only an empty read ends later (docket's listener just reads again). The price, paid at
    stops only: a stopping docket waits up to `wait_s` for its listener, and a cancelled read leaves
    its thread parked that long (burner_redis chose 0.1 s slices to keep that short). False if this
    burner_redis reads otherwise (the server then runs with its defaults)."""
    try:
        from burner_redis.pubsub import PubSub
    except ImportError:
        return False
    original = getattr(PubSub, "_queue_get", None)
    if original is None or list(inspect.signature(original).parameters) != ["self", "timeout"]:
        return False

    async def read(self: Any, timeout: float | None) -> Any:
        if (timeout is not None and timeout <= 0) or not isinstance(getattr(self, "_queue", None), queue.Queue):
            return await original(self, timeout)
        deadline = None if timeout is None else time.monotonic() + max(timeout, wait_s)
        while True:
            hop = wait_s if deadline is None else max(0.0, min(wait_s, deadline - time.monotonic()))
            try:
                return await asyncio.to_thread(self._queue.get, True, hop)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    setattr(PubSub, "_queue_get", read)  # noqa: B010 (a class's method, replaced for its callers)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bitinglip.prefect_server", add_help=False)
    parser.add_argument("--queue-poll-s", type=float, default=None)
    parser.add_argument("--pubsub-wait-s", type=float, default=None)
    parser.add_argument("--quiet-loop", action="store_true")  # uvicorn looks for a stop once a second
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    for flag, value in (("--queue-poll-s", known.queue_poll_s), ("--pubsub-wait-s", known.pubsub_wait_s)):
        if value is not None and not (math.isfinite(value) and value > 0):  # nan passes a plain <= 0
            parser.error(f"{flag} must be a positive number of seconds")
    if known.quiet_loop:
        from bitinglip import quiet_server

        quiet_server.install()
    if known.queue_poll_s is not None and not relax_task_queue(known.queue_poll_s):
        logging.basicConfig()
        log.warning("this Prefect has no docket Worker hook: its task queue polls at its defaults")
    if known.pubsub_wait_s is not None and not relax_pubsub_reads(known.pubsub_wait_s):
        logging.basicConfig()
        log.warning("this burner_redis reads its pub/sub otherwise: docket's listener polls at its defaults")
    from prefect.cli import app

    sys.argv = ["prefect", "server", *rest]
    app()


if __name__ == "__main__":
    main()
