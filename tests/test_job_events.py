"""GET /api/v1/tasks/{id}/events and `bitinglip tasks watch` against the running platform: a real text
job's text read live over real HTTP from the model worker through the gateway, its final state, resuming
with Last-Event-ID, cancelling while watched, and what a stranger or a hostile header gets."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from tests.platform_harness import Platform
from tests.security.test_quotas import new_user
from tests.test_gateway_text import assert_envelope
from tests.test_jobs import submit, wait_done

COUNTING = ", ".join(str(n) for n in range(1, 30))  # it goes on counting: a long, steady text


def _text_job(client: httpx.Client, max_tokens: int = 160) -> str:
    return str(submit(client, {"prompt": COUNTING, "max_tokens": max_tokens, "temperature": 0, "raw": True})["id"])


def read_events(
    client: httpx.Client, job_id: str, last_event_id: str | None = None, tokens: int | None = None
) -> list[ServerSentEvent]:
    """The stream's events until it ends (or until `tokens` token events, then the client hangs up)."""
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    events: list[ServerSentEvent] = []
    with connect_sse(client, "GET", f"/api/v1/tasks/{job_id}/events", headers=headers) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for event in source.iter_sse():
            events.append(event)
            if tokens is not None and sum(e.event == "token" for e in events) >= tokens:
                break
    return events


def pieces(events: list[ServerSentEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in events if e.event == "token"]


def assert_well_formed(events: list[ServerSentEvent], after: int = 0) -> dict[str, Any]:
    """States in order, pieces numbered on from `after` with their number as the SSE id, `done` last
    and only there; returns the finished job."""
    names = [e.event for e in events]
    assert names[0] == "state" and names[-1] == "done" and names.count("done") == 1, names
    order = ["queued", "running", "completed", "failed", "cancelled"]
    statuses = [json.loads(e.data)["status"] for e in events if e.event == "state"]
    assert statuses == sorted(statuses, key=order.index), statuses
    numbers = [p["n"] for p in pieces(events)]
    assert numbers == list(range(after + 1, after + 1 + len(numbers))), numbers
    assert [e.id for e in events if e.event == "token"] == [str(n) for n in numbers]
    done = json.loads(events[-1].data)
    assert statuses[-1] == done["status"]  # the final state is said as a state too
    return dict(done)


def test_a_text_jobs_tokens_arrive_live_and_add_up_to_its_result(platform: Platform) -> None:
    _, key = new_user(platform)
    client = platform.client(key=key)
    job_id = _text_job(client)
    events = read_events(client, job_id)
    done = assert_well_formed(events)
    assert done["status"] == "completed" and done["id"] == job_id
    text = pieces(events)
    assert len(text) > 1  # piece by piece, not the result at the end
    assert "".join(p["text"] for p in text) == done["result"]["text"]
    assert done == client.get(f"/api/v1/tasks/{job_id}").json()  # the job, as GET shows it

    # watching a finished job: its state and the end at once, whatever the client had before
    for resume in (None, "3", "999999999"):
        again = read_events(client, job_id, last_event_id=resume)
        assert [e.event for e in again] == ["state", "done"]
        assert json.loads(again[-1].data)["result"]["text"] == done["result"]["text"]


def test_a_reconnect_with_last_event_id_resumes_without_repeats_or_losing_the_end(platform: Platform) -> None:
    client = platform.client()
    job_id = _text_job(client, max_tokens=240)
    first = read_events(client, job_id, tokens=3)  # the client drops the stream after three pieces
    head = pieces(first)
    assert [p["n"] for p in head] == [1, 2, 3]
    rest = read_events(client, job_id, last_event_id="3")
    done = assert_well_formed(rest, after=3)
    assert done["status"] == "completed"
    text = "".join(p["text"] for p in head + pieces(rest))
    assert done["result"]["text"].startswith(text)
    if pieces(rest):  # it was still running at the reconnect: the rest came live, up to the end
        assert text == done["result"]["text"]


def test_cancelling_a_watched_job_ends_its_stream_cancelled_with_the_text_so_far(platform: Platform) -> None:
    client = platform.client()
    job_id = _text_job(client, max_tokens=2000)
    events: list[ServerSentEvent] = []
    with connect_sse(client, "GET", f"/api/v1/tasks/{job_id}/events") as source:
        for event in source.iter_sse():
            events.append(event)
            if len(pieces(events)) == 2:
                assert client.delete(f"/api/v1/tasks/{job_id}").json()["cancel_requested"] is True
    done = assert_well_formed(events)
    assert done["status"] == "cancelled"
    assert "".join(p["text"] for p in pieces(events)) == done["result"]["text"]
    assert done["result"]["usage"]["completion_tokens"] < 2000


def test_an_embedding_job_streams_its_states_and_end_without_tokens(platform: Platform) -> None:
    client = platform.client()
    accepted = client.post("/api/v1/tasks", json={"type": "embedding", "params": {"input": ["watched"]}})
    assert accepted.status_code == 202, accepted.text
    events = read_events(client, accepted.json()["id"])
    done = assert_well_formed(events)
    assert done["status"] == "completed" and not pieces(events)
    assert len(done["result"]["data"][0]) == 384


def test_strangers_and_hostile_requests_get_the_error_shape(platform: Platform) -> None:
    owner, key = new_user(platform)
    _, other_key = new_user(platform)
    mine = platform.client(key=key)
    job_id = str(submit(mine, {"prompt": "Hi", "max_tokens": 2})["id"])
    wait_done(mine, job_id)
    route = f"/api/v1/tasks/{job_id}/events"

    assert_envelope(platform.client(key="").get(route), 401)
    assert_envelope(platform.client(key="bl-not-a-key").get(route), 401)
    stranger = platform.client(key=other_key)
    missing = assert_envelope(stranger.get(route), 404)  # another user's job: as if it did not exist
    assert missing["message"] == f"job {job_id!r} not found"
    for bad_id in ("no-such-job", "..%2F..%2Fauth%2Fkeys", "x" * 2000, "%00", "'; DROP TABLE jobs; --"):
        assert_envelope(mine.get(f"/api/v1/tasks/{bad_id}/events"), 404)
    admin = read_events(platform.client(), job_id)  # an admin watches anyone's job
    assert json.loads(admin[-1].data)["owner"] == owner

    hostile: list[str | bytes] = ["abc", "-1", "1e3", "0x10", "1" * 10, "9" * 5000, "١٢".encode(), b"1\xff"]
    for header in hostile:  # Arabic-Indic digits, a byte that is no text
        error = assert_envelope(mine.get(route, headers={"Last-Event-ID": header}), 400)
        assert error["param"] == "Last-Event-ID", error
    assert [e.event for e in read_events(mine, job_id, last_event_id="")] == ["state", "done"]


@pytest.mark.parametrize("outcome", ["completed", "cancelled"])
def test_cli_tasks_watch_prints_the_text_live_and_exits_by_the_outcome(platform: Platform, outcome: str) -> None:
    """Through BITINGLIP_GATEWAY_URL, as from another machine: the text on stdout, the states and the
    end on stderr; exit 0 when completed, 1 when cancelled."""
    _, key = new_user(platform)
    client = platform.client(key=key)
    job_id = _text_job(client, max_tokens=2000 if outcome == "cancelled" else 48)
    env = {**platform.sup.env, "BITINGLIP_GATEWAY_URL": platform.gateway, "BITINGLIP_API_KEY": key, "COLUMNS": "200"}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "bitinglip.cli", "tasks", "watch", job_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if outcome == "cancelled":
        assert watcher.stdout is not None
        watcher.stdout.read(3)  # some text has been printed: the job runs and is watched
        assert client.delete(f"/api/v1/tasks/{job_id}").status_code == 200
    out, err = watcher.communicate(timeout=180)
    job = client.get(f"/api/v1/tasks/{job_id}").json()
    assert job["status"] == outcome
    assert watcher.returncode == (0 if outcome == "completed" else 1), out + err
    if outcome == "completed":
        assert out == job["result"]["text"] + "\n"  # exactly the text: `> file` keeps just that
    assert err.strip().splitlines()[-1] == f"{job_id}: {outcome}", err
    assert "Traceback" not in err


def test_cli_tasks_watch_of_an_unknown_job_is_a_one_line_error(platform: Platform) -> None:
    env = {**platform.sup.env, "BITINGLIP_GATEWAY_URL": platform.gateway, "COLUMNS": "200"}
    shown = subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", "tasks", "watch", "no-such-job"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 1 and shown.stdout.strip() == "error: 404: job 'no-such-job' not found", shown
