"""`bitinglip tasks watch ID`: a job's live progress from `GET /api/v1/tasks/{id}/events`. The text of a
text job goes to stdout as it is generated (so `> file` keeps just the text); state changes and the
final state go to stderr. A dropped connection is resumed with Last-Event-ID, so no text repeats and
the final state is never missed. Exit 0 when the job completed, 1 when it failed or was cancelled."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import httpx
import typer
from httpx_sse import EventSource
from rich.console import Console

from bitinglip.cli import _credentials, _segment, _settings, fail
from bitinglip.cli.objects import tasks_app

RECONNECTS = 5  # tries in a row without any event before giving up
status_console = Console(stderr=True)


class _Watch:
    """What one watch has seen so far, across reconnects."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.last_id: str | None = None
        self.text_open = False  # text was printed and its line is not ended yet
        self.final: dict[str, Any] | None = None

    def handle(self, event: str, data: str, event_id: str) -> None:
        if event == "token":
            sys.stdout.write(json.loads(data)["text"])
            sys.stdout.flush()
            self.text_open = True
            self.last_id = event_id or self.last_id
        elif event in ("state", "done"):
            job = json.loads(data)
            if event == "done":
                self.final = job
            elif job["status"] not in ("completed", "failed", "cancelled"):  # the final one is said once, below
                self._say(f"{job['id']}: {job['status']}" + (f" on {job['worker']}" if job.get("worker") else ""))
        elif event == "goodbye":
            self.end_text()
            fail(f"the stream ended: {json.loads(data).get('reason', 'goodbye')}")

    def _say(self, line: str) -> None:
        self.end_text()
        status_console.print(line, style="dim", highlight=False)

    def end_text(self) -> None:
        if self.text_open:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.text_open = False


def _refused(response: httpx.Response) -> str:
    """The gateway's one-line error for a stream it would not open (404, 401, 429, ...)."""
    response.read()
    try:
        error = response.json().get("error", {})
        message = error.get("message") if isinstance(error, dict) else error
    except ValueError:
        message = "not the gateway's answer"
    return f"{response.status_code}: {message}"


@tasks_app.command("watch")
def tasks_watch(job_id: str) -> None:
    """Follow a job live: its text as it is generated (stdout), its state changes and final state
    (stderr). Exits 0 when it completed, 1 when it failed or was cancelled."""
    settings = _settings("cli")
    url = f"{settings.gateway_url}/api/v1/tasks/{_segment(job_id)}/events"
    watch = _Watch(job_id)
    misses, why = 0, "it closed the stream"
    while watch.final is None:
        headers = {**_credentials(settings), "Accept": "text/event-stream"}
        if watch.last_id is not None:
            headers["Last-Event-ID"] = watch.last_id
        try:
            with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(60.0, connect=10.0)) as response:
                if response.status_code != 200:
                    fail(_refused(response))
                for sse in EventSource(response).iter_sse():
                    misses = 0
                    watch.handle(sse.event, sse.data, sse.id)
        except httpx.HTTPError as exc:
            why = type(exc).__name__
        if watch.final is None:  # dropped before the end: resume after the last piece received
            misses += 1
            if misses > RECONNECTS:
                watch.end_text()
                fail(f"lost the job's stream from the gateway at {settings.gateway_url} ({why})")
            time.sleep(min(0.5 * misses, 3.0))
    _finish(watch)


def _finish(watch: _Watch) -> None:
    job = watch.final or {}
    watch.end_text()
    status = job.get("status")
    line = f"{job.get('id', watch.job_id)}: {status}"
    if status == "failed":
        line += f" ({(job.get('error') or {}).get('message', 'no reason recorded')})"
    status_console.print(line, style="green" if status == "completed" else "red", highlight=False)
    if status != "completed":
        raise typer.Exit(1)
