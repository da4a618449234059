"""A model pull reports how far it is into its job row while it runs (flows/download.py), so the
event stream pushes it and GET /api/v1/tasks/{id} shows it: phase, overall fraction, bytes and files."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from tests.console.conftest import EventReader, PullSource, User
from tests.platform_harness import Platform


def test_a_pull_reports_its_progress_live(
    platform: Platform,
    users: dict[str, User],
    reader: Callable[..., EventReader],
    pull_source: PullSource,
) -> None:
    admin = reader(platform.admin_key, topics=["jobs"])
    alice = reader(users["alice"].key, topics=["jobs", "dashboard"])
    for stream in (admin, alice):
        stream.wait_for(lambda e, _: e == "hello", timeout=30)
    name = f"progress-{uuid.uuid4().hex[:6]}"
    client = platform.client()
    accepted = client.post(
        "/api/v1/models/download", json={"source": pull_source.url, "name": name, "task": "embedding"}
    )
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    try:
        admin.wait_for(lambda e, d: e == "job" and d["id"] == job_id and d["status"] == "completed", timeout=180)
        admin_done_at = datetime.now(UTC).isoformat()
        pushed = [d["progress"] for e, d in admin.seen if e == "job" and d["id"] == job_id and d["progress"]]
        fractions = [p["fraction"] for p in pushed]
        # it only moves forward; how many steps the stream's 0.25 s looks catch depends on how fast this box
        # copies 100 MB (a warm page cache: all of it between two looks), so the moving bar is the browser
        # test's to see (test_pulling_a_model_shows_its_progress_live)
        assert fractions == sorted(fractions), pushed
        assert {p["phase"] for p in pushed} <= {"fetch", "convert", "install", "completed"}
        final = {
            "phase": "completed",
            "fraction": 1.0,
            "bytes_done": pull_source.size,
            "bytes_total": pull_source.size,
            "files_done": pull_source.files,
            "files_total": pull_source.files,
        }
        assert pushed[-1] == final
        assert client.get(f"/api/v1/tasks/{job_id}").json()["progress"] == final
        # a user hears nothing of the admin's pull (downloads are the admin's jobs): read her stream up
        # to a dashboard event sent after the pull ended
        alice.wait_for(lambda e, d: e == "dashboard" and d["at"] > admin_done_at, timeout=30)
        assert not [d for e, d in alice.seen if e == "job" and d["id"] == job_id]
    finally:
        client.delete(f"/api/v1/models/{name}", params={"force": "true"})
