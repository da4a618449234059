"""The launcher of Prefect's server: the task queue's worker it builds polls at the given pace, its
in-memory pub/sub reads wait longer, and the platform asks for both only when lean."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest
from docket import Docket
from prefect.server.api import background_workers

from bitinglip import prefect_server
from bitinglip.config import Settings


def test_relaxed_queue_worker_polls_at_the_given_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background_workers, "Worker", background_workers.Worker)  # restored after the test
    assert prefect_server.relax_task_queue(2.0)
    worker = background_workers.Worker(Docket(name="test-relaxed", url="memory://"))
    assert worker.minimum_check_interval == timedelta(seconds=2)
    assert worker.scheduling_resolution == timedelta(seconds=2)


def test_a_worker_without_those_parameters_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class OtherWorker:  # a docket release that names its intervals otherwise
        def __init__(self, docket: object, poll_every: timedelta = timedelta(seconds=1)) -> None:
            self.docket = docket

    monkeypatch.setattr(background_workers, "Worker", OtherWorker)
    assert not prefect_server.relax_task_queue(2.0)
    assert background_workers.Worker is OtherWorker


def test_command_relaxes_the_queue_only_when_lean(tmp_path: Path) -> None:
    lean = prefect_server.command(Settings(home_dir=tmp_path, prefect_lean=True), "127.0.0.1", 4200)
    assert lean[1:] == [
        "-m",
        "bitinglip.prefect_server",
        "--queue-poll-s",
        "2",
        "--pubsub-wait-s",
        "1",
        "--quiet-loop",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        "4200",
    ]
    plain = prefect_server.command(Settings(home_dir=tmp_path, prefect_lean=False), "127.0.0.1", 4200)
    assert (
        "--queue-poll-s" not in plain
        and "--quiet-loop" not in plain
        and "--pubsub-wait-s" not in plain
        and plain[-4:] == ["--host", "127.0.0.1", "--port", "4200"]
    )


@pytest.mark.parametrize("flag", ["--queue-poll-s", "--pubsub-wait-s"])
@pytest.mark.parametrize("pace", ["0", "-1", "nan", "inf"])
def test_a_pace_that_is_not_a_positive_number_is_refused(flag: str, pace: str) -> None:
    with pytest.raises(SystemExit):
        prefect_server.main([flag, pace, "start"])


@pytest.fixture()
def original_pubsub_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    from burner_redis.pubsub import PubSub

    monkeypatch.setattr(PubSub, "_queue_get", PubSub._queue_get)  # restored after the test


@pytest.mark.usefixtures("original_pubsub_reads")
async def test_relaxed_pubsub_reads_wait_longer_when_empty_and_still_deliver_at_once() -> None:
    """docket's in-memory pub/sub (burner_redis), as the cancellation listener reads it."""
    assert prefect_server.relax_pubsub_reads(5.0)
    async with Docket(name="test-pubsub", url="memory://") as docket, docket._pubsub() as pubsub:
        await pubsub.subscribe("channel")
        assert (await pubsub.get_message(timeout=None) or {})["type"] == "subscribe"

        started = time.monotonic()
        assert await pubsub.get_message(timeout=0.1) is None  # empty: one longer wait, not 0.1 s
        assert time.monotonic() - started >= 4.5
        assert await pubsub.get_message(timeout=0.0) is None  # a non-blocking read stays one
        assert await pubsub.get_message(timeout=-1) is None  # and so does a spent timeout

        for timeout in (None, 0.1):  # a message ends a wait the moment it arrives, not at the wait's end
            waiting = asyncio.ensure_future(pubsub.get_message(timeout=timeout))
            await asyncio.sleep(0.1)
            sent = time.monotonic()
            async with docket.redis() as redis:
                await redis.publish("channel", "cancel this")
            message = await asyncio.wait_for(waiting, timeout=10)
            assert message is not None and message["data"] == b"cancel this"
            assert time.monotonic() - sent < 2.5  # the wait is 5 s


def test_a_pubsub_that_reads_otherwise_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from burner_redis.pubsub import PubSub

    async def other(self: object, timeout: float | None, block: bool) -> None:  # another signature
        return None

    monkeypatch.setattr(PubSub, "_queue_get", other)
    assert not prefect_server.relax_pubsub_reads(1.0)
    assert PubSub._queue_get is other


@pytest.mark.parametrize("redis", [None, "redis://127.0.0.1:6379/9"])
def test_lean_settings_are_prefect_settings_and_batch_recording_only_without_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis: str | None
) -> None:
    """Prefect ignores an environment name it does not know, so each one the lean server sets is read
    back through Prefect's own settings; on Redis, events are not acknowledged before they are written."""
    from prefect.settings import Settings as PrefectSettings

    env = Settings(home_dir=tmp_path, prefect_lean=True, prefect_redis_url=redis).prefect_env()
    for name, value in env.items():
        if name.startswith("PREFECT_SERVER_SERVICES_"):
            monkeypatch.setenv(name, value)
    services = PrefectSettings().server.services
    assert services.triggers.enabled is False and services.pause_expirations.enabled is False
    assert services.late_runs.loop_seconds == services.foreman.loop_seconds == 60
    recorder, persister = services.task_run_recorder, services.event_persister
    if redis is None:
        assert (recorder.batch_size, recorder.read_batch_size, recorder.flush_interval) == (100, 100, 1)
        assert (persister.batch_size, persister.read_batch_size, persister.flush_interval) == (200, 100, 5)
    else:  # Prefect's defaults
        assert (recorder.batch_size, recorder.read_batch_size, persister.batch_size) == (1, 1, 20)
