"""What a receiver gets: the Standard Webhooks envelope (`type`, `timestamp`, `data`) around the job's
own state, owner-scoped and free of secrets: no params (prompts, the key a batch ran under), no
credentials, nothing of another user's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from bitinglip.db.tables import Job

Event = Literal["start", "completed", "failed"]
EVENTS: tuple[str, ...] = get_args(Event)
EVENT_OF_STATUS = {"running": "start", "completed": "completed", "failed": "failed"}  # cancelled: none


def wants(job: Job, event: str) -> bool:
    return bool(job.webhook) and event in (job.webhook or {}).get("events", ())


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def body(job: Job, event: str, max_bytes: int, now: datetime | None = None) -> bytes:
    """The JSON body, at most `max_bytes`: a result that would pass it is left out (`result_omitted`)."""
    data: dict[str, Any] = {
        "id": job.id,
        "object": "batch" if job.type == "batch" else "job",
        "type": job.type,
        "model": job.model,
        "status": "running" if event == "start" else job.status,
        "request_id": job.request_id,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": None if event == "start" else _iso(job.finished_at),
        "error": None if event == "start" else job.error,
        "result": None if event == "start" else job.result,
    }
    envelope = {"type": f"{data['object']}.{event}", "timestamp": _iso(now or datetime.now(UTC)), "data": data}
    encoded = json.dumps(envelope, separators=(",", ":")).encode()
    if len(encoded) > max_bytes:
        data["result"], data["result_omitted"] = None, True
        encoded = json.dumps(envelope, separators=(",", ":")).encode()
    return encoded
