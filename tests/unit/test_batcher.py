"""The dynamic batcher with a real (pure-Python) batch function: grouping, deadline, priority,
failure isolation and propagation, the output-count guarantee and backpressure."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bitinglip.engines.batcher import BatchKnobs, ContinuousBatcher, DynamicBatcher
from bitinglip.engines.types import GenerationFailed
from bitinglip.errors import InvalidRequest, Overloaded


@pytest.fixture()
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


class Recorder:
    """Upper-cases items and records every batch it was given."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.gate = gate

    def __call__(self, items: list[str]) -> list[str]:
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay)
        self.batches.append(list(items))
        return [i.upper() for i in items]


def make(
    executor: ThreadPoolExecutor,
    fn: Callable[[list[str]], list[str]],
    size: int = 4,
    wait_ms: float = 50,
    queue: int = 64,
    isolate: bool = True,
) -> DynamicBatcher[str, str]:
    return DynamicBatcher("test", fn, executor, BatchKnobs(size, wait_ms, queue), isolate=isolate)


async def test_concurrent_requests_are_grouped_up_to_max_batch_size(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    batcher = make(executor, rec, size=4)
    results = await asyncio.gather(*(batcher.submit(f"r{i}", 0) for i in range(10)))
    assert results == [f"R{i}" for i in range(10)]
    assert [len(b) for b in rec.batches] == [4, 4, 2]
    await batcher.stop()


async def test_a_lone_request_waits_at_most_max_wait(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    batcher = make(executor, rec, size=8, wait_ms=100)
    started = time.monotonic()
    assert await batcher.submit("solo", 0) == "SOLO"
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 1.0
    assert rec.batches == [["solo"]]
    await batcher.stop()


async def test_full_batch_runs_without_waiting_for_the_deadline(executor: ThreadPoolExecutor) -> None:
    batcher = make(executor, Recorder(), size=2, wait_ms=5_000)
    started = time.monotonic()
    await asyncio.gather(batcher.submit("a", 0), batcher.submit("b", 0))
    assert time.monotonic() - started < 1.0
    await batcher.stop()


async def test_priority_orders_waiting_requests(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    batcher = make(executor, rec, size=2, wait_ms=0)
    first = asyncio.ensure_future(batcher.submit("blocker", 0))
    await asyncio.sleep(0.05)  # the blocker's batch is now running and holds the compute thread
    waiting = [
        asyncio.ensure_future(batcher.submit(name, prio))
        for name, prio in [("batch", 4), ("low", 3), ("sync", 0), ("high", 1)]
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(first, *waiting)
    assert rec.batches == [["blocker"], ["sync", "high"], ["low", "batch"]]
    await batcher.stop()


async def test_without_isolation_a_failing_batch_fails_every_request_with_the_reason(
    executor: ThreadPoolExecutor,
) -> None:
    def boom(items: list[str]) -> list[str]:
        raise ValueError("engine exploded")

    batcher = make(executor, boom, size=3, isolate=False)
    results = await asyncio.gather(*(batcher.submit(str(i), 0) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) and "engine exploded" in str(r) for r in results)
    await batcher.stop()


class Poisoned:
    """Upper-cases items; any batch holding a "poison" item raises with internal detail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        if "poison" in items:
            raise ValueError("tensor shape mismatch at layer 3")  # what a client must never see
        if "invalid" in items:
            raise InvalidRequest("this input is not allowed", param="input")
        return [i.upper() for i in items]


async def test_a_poison_item_fails_alone_and_its_batch_mates_succeed(executor: ThreadPoolExecutor) -> None:
    engine = Poisoned()
    batcher = make(executor, engine, size=4, wait_ms=50)
    names = ["a", "poison", "b", "invalid"]
    results = await asyncio.gather(*(batcher.submit(n, 0) for n in names), return_exceptions=True)
    assert results[0] == "A" and results[2] == "B"
    poisoned, invalid = results[1], results[3]
    assert isinstance(poisoned, GenerationFailed) and poisoned.status_code == 500
    assert poisoned.body()["error"] == {
        "message": "generation failed for this request",
        "type": "internal_error",
        "param": None,
        "code": "generation_failed",
    }
    assert "tensor" not in str(poisoned) and isinstance(poisoned.__cause__, ValueError)  # detail: logs only
    assert isinstance(invalid, InvalidRequest) and invalid.param == "input"  # our own errors pass as they are
    assert engine.batches == [names, ["a"], ["poison"], ["b"], ["invalid"]]  # the batch, then one by one
    assert await batcher.submit("after", 0) == "AFTER"
    await batcher.stop()


async def test_an_exception_in_a_result_slot_fails_that_request_only(executor: ThreadPoolExecutor) -> None:
    def per_item(items: list[str]) -> list[str | Exception]:
        return [GenerationFailed() if i == "bad" else i.upper() for i in items]

    batcher: DynamicBatcher[str, str] = DynamicBatcher("test", per_item, executor, BatchKnobs(3, 50, 8))
    results = await asyncio.gather(*(batcher.submit(n, 0) for n in ("x", "bad", "y")), return_exceptions=True)
    assert results[0] == "X" and results[2] == "Y" and isinstance(results[1], GenerationFailed)
    assert batcher.stats.batches == 1  # nothing was rerun
    await batcher.stop()


async def test_output_count_must_equal_input_count(executor: ThreadPoolExecutor) -> None:
    batcher = make(executor, lambda items: items[:-1], size=2)
    results = await asyncio.gather(batcher.submit("a", 0), batcher.submit("b", 0), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "1 results for 2" in str(r) for r in results)
    await batcher.stop()


async def test_batcher_keeps_serving_after_a_failure(executor: ThreadPoolExecutor) -> None:
    calls = {"n": 0}

    def flaky(items: list[str]) -> list[str]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first batch fails")
        return items

    batcher = make(executor, flaky, size=1, wait_ms=0)
    with pytest.raises(GenerationFailed):  # a batch of one failed: that request, alone
        await batcher.submit("a", 0)
    assert await batcher.submit("b", 0) == "b"
    await batcher.stop()


async def test_full_queue_refuses_with_retry_after(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    batcher = make(executor, Recorder(gate=gate), size=1, wait_ms=0, queue=2)
    running = asyncio.ensure_future(batcher.submit("running", 0))
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(batcher.submit(f"q{i}", 0)) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as refused:
        await batcher.submit("one too many", 0)
    assert refused.value.status_code == 503 and "Retry-After" in refused.value.headers()
    gate.set()
    assert await asyncio.gather(running, *queued) == ["RUNNING", "Q0", "Q1"]
    await batcher.stop()


async def test_background_work_waits_for_room_and_never_crowds_out_interactive(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    batcher = make(executor, Recorder(gate=gate), size=1, wait_ms=0, queue=2)
    running = asyncio.ensure_future(batcher.submit("running", 0))
    await asyncio.sleep(0.05)
    jobs = [asyncio.ensure_future(batcher.submit(f"job{i}", 3)) for i in range(5)]  # more than the queue holds
    await asyncio.sleep(0.05)
    assert batcher.stats.waiting == 2 and not any(j.done() for j in jobs)  # the rest wait, none refused
    interactive = [asyncio.ensure_future(batcher.submit(f"sync{i}", 0)) for i in range(2)]  # still admitted
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await batcher.submit("third sync", 0)  # interactive requests have their own bound
    gate.set()
    assert await asyncio.gather(*interactive) == ["SYNC0", "SYNC1"]
    assert await asyncio.gather(*jobs) == [f"JOB{i}" for i in range(5)]
    await running
    await batcher.stop()


async def test_cancelled_waiter_gives_its_slot_away(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    batcher = make(executor, rec, size=2, wait_ms=0)
    blocker = asyncio.ensure_future(batcher.submit("blocker", 0))
    await asyncio.sleep(0.05)
    gone = asyncio.ensure_future(batcher.submit("gone", 0))
    kept = [asyncio.ensure_future(batcher.submit(n, 0)) for n in ("x", "y")]
    await asyncio.sleep(0.01)
    gone.cancel()
    gate.set()
    await asyncio.gather(blocker, *kept)
    assert rec.batches == [["blocker"], ["x", "y"]]
    await batcher.stop()


class CountdownEngine:
    """A pure-Python stand-in for the decode loop: an item finishes after `int(item)` steps."""

    def __init__(self, fail_at_step: int | None = None) -> None:
        """Items named "poison:N" end at their first step with their own failure."""
        self.running: dict[str, int] = {}
        self.widths: list[int] = []
        self.steps = 0
        self.fail_at_step = fail_at_step

    def step(self, admitted: list[str]) -> list[tuple[str, str | Exception]]:
        self.steps += 1
        if self.steps == self.fail_at_step:
            raise RuntimeError("device lost")
        done: list[tuple[str, str | Exception]] = []
        for item in admitted:
            if item.startswith("poison"):
                done.append((item, GenerationFailed()))
            else:
                self.running[item] = int(item.split(":")[1])
        self.widths.append(len(self.running))
        for item in list(self.running):
            self.running[item] -= 1
            if self.running[item] == 0:
                del self.running[item]
                done.append((item, f"done {item}"))
        time.sleep(0.005)
        return done

    def reset(self) -> None:
        self.running.clear()


async def test_continuous_batcher_admits_new_items_while_others_run(executor: ThreadPoolExecutor) -> None:
    engine = CountdownEngine()
    batcher = ContinuousBatcher("c", engine.step, engine.reset, executor, BatchKnobs(3, 0, 16))
    long = asyncio.ensure_future(batcher.submit("long:40", 0))
    await asyncio.sleep(0.05)
    assert not long.done()
    shorts = await asyncio.gather(*(batcher.submit(f"short{i}:2", 0) for i in range(4)))
    assert not long.done()  # the short ones finished while the long one kept running
    assert shorts == [f"done short{i}:2" for i in range(4)]
    assert await long == "done long:40"
    assert max(engine.widths) == 3  # never more than max_batch_size in flight
    await batcher.stop()


async def test_an_idle_continuous_batcher_starts_an_interactive_request_at_once_and_gathers_background_work(
    executor: ThreadPoolExecutor,
) -> None:
    """max_wait is 1 s. An interactive request does not wait for company (later ones join at the next
    step); background requests arriving apart start together, after the wait."""
    engine = CountdownEngine()
    batcher = ContinuousBatcher("c", engine.step, engine.reset, executor, BatchKnobs(4, 1_000, 16))
    started = time.monotonic()
    assert await batcher.submit("chat:2", 0) == "done chat:2"
    assert time.monotonic() - started < 0.8  # before max_wait: it did not gather
    assert engine.widths == [1, 1]

    first = asyncio.ensure_future(batcher.submit("job1:1", 3))
    await asyncio.sleep(0.2)
    assert engine.steps == 2  # still gathering: no step for the background request yet
    second = asyncio.ensure_future(batcher.submit("job2:1", 3))
    assert await asyncio.gather(first, second) == ["done job1:1", "done job2:1"]
    assert engine.widths == [1, 1, 2]  # both in one first step
    await batcher.stop()


async def test_an_interactive_request_ends_a_background_gather_but_a_cancelled_one_does_not(
    executor: ThreadPoolExecutor,
) -> None:
    engine = CountdownEngine()
    batcher = ContinuousBatcher("c", engine.step, engine.reset, executor, BatchKnobs(4, 1_000, 16))
    job = asyncio.ensure_future(batcher.submit("job:1", 3))
    await asyncio.sleep(0.05)
    gone = asyncio.ensure_future(batcher.submit("gone:1", 0))
    await asyncio.sleep(0)  # it is queued, and the gathering loop is due to look
    gone.cancel()  # its caller went away before the loop looked
    await asyncio.sleep(0.2)
    assert engine.steps == 0  # the job still gathers: a cancelled request is no reason to start
    chat = asyncio.ensure_future(batcher.submit("chat:1", 0))
    assert await asyncio.wait_for(asyncio.gather(job, chat), timeout=0.7) == ["done job:1", "done chat:1"]
    assert engine.widths == [2]  # the chat ended the gather at once; both started in one step
    await batcher.stop()


async def test_continuous_batcher_fails_a_poison_item_alone(executor: ThreadPoolExecutor) -> None:
    engine = CountdownEngine()
    batcher = ContinuousBatcher("c", engine.step, engine.reset, executor, BatchKnobs(4, 20, 16))
    running = asyncio.ensure_future(batcher.submit("long:20", 0))
    await asyncio.sleep(0.03)
    names = ["a:3", "poison:1", "b:5"]
    results = await asyncio.gather(*(batcher.submit(n, 0) for n in names), return_exceptions=True)
    assert results[0] == "done a:3" and results[2] == "done b:5" and isinstance(results[1], GenerationFailed)
    assert await running == "done long:20"
    await batcher.stop()


async def test_continuous_batcher_failure_fails_everything_in_flight(executor: ThreadPoolExecutor) -> None:
    engine = CountdownEngine(fail_at_step=3)
    batcher = ContinuousBatcher("c", engine.step, engine.reset, executor, BatchKnobs(4, 20, 16))
    results = await asyncio.gather(*(batcher.submit(f"x{i}:10", 0) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "device lost" in str(r) for r in results)
    assert await batcher.submit("after:1", 0) == "done after:1"  # and it serves again
    await batcher.stop()
