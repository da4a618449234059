"""The batcher base and its two loop strategies, driven by tiny pure-Python engines on a real compute
thread: a `run_batch` or `step` function is exactly what a batcher is given, so these are its real
inputs, not stand-ins. No model, no HTTP, no Prefect."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bitinglip.engines.batcher import Batcher, BatchKnobs, ContinuousBatcher, DynamicBatcher
from bitinglip.engines.types import GenerationFailed
from bitinglip.errors import InvalidRequest, Overloaded


@pytest.fixture()
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


async def until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the batcher never reached the expected state")


class Gated:
    """Upper-cases items, records each batch, and holds every batch until the gate opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[list[str]] = []

    def __call__(self, items: list[str]) -> list[str | Exception]:
        self.gate.wait(5)
        self.batches.append(list(items))
        return [i.upper() for i in items]


def dynamic(
    executor: ThreadPoolExecutor,
    run_batch: Callable[[list[str]], list[str | Exception]],
    size: int = 4,
    queue: int = 16,
    isolate: bool = True,
) -> DynamicBatcher[str, str]:
    return DynamicBatcher("m", run_batch, executor, BatchKnobs(size, 0, queue), isolate=isolate)


def test_the_base_has_no_loop_strategy_of_its_own(executor: ThreadPoolExecutor) -> None:
    with pytest.raises(TypeError):
        Batcher("m", executor, BatchKnobs(1, 0, 1))  # type: ignore[abstract]
    assert issubclass(DynamicBatcher, Batcher) and issubclass(ContinuousBatcher, Batcher)
    assert not issubclass(ContinuousBatcher, DynamicBatcher)  # it inherits nothing it does not use


async def test_waiting_requests_run_best_priority_first_then_in_arrival_order(executor: ThreadPoolExecutor) -> None:
    engine = Gated()
    batcher = dynamic(executor, engine, size=1)
    blocker = asyncio.ensure_future(batcher.submit("blocker", 0))
    await until(lambda: batcher.stats.running == 1)
    rest = [asyncio.ensure_future(batcher.submit(n, p)) for n, p in [("c1", 2), ("a1", 0), ("b", 1), ("a2", 0)]]
    await until(lambda: batcher.stats.waiting == 4)
    engine.gate.set()
    await asyncio.gather(blocker, *rest)
    assert [b[0] for b in engine.batches] == ["blocker", "a1", "a2", "b", "c1"]
    await batcher.stop()


async def test_a_full_queue_refuses_interactive_requests_at_once(executor: ThreadPoolExecutor) -> None:
    engine = Gated()
    batcher = dynamic(executor, engine, size=1, queue=2)
    running = asyncio.ensure_future(batcher.submit("running", 0))
    await until(lambda: batcher.stats.running == 1)
    queued = [asyncio.ensure_future(batcher.submit(f"q{i}", 0)) for i in range(2)]
    await until(lambda: batcher.stats.waiting == 2)
    with pytest.raises(Overloaded) as refused:
        await batcher.submit("one too many", 0)
    assert refused.value.status_code == 503 and "Retry-After" in refused.value.headers()
    engine.gate.set()
    assert await asyncio.gather(running, *queued) == ["RUNNING", "Q0", "Q1"]
    await batcher.stop()


async def test_background_work_waits_for_room_instead_of_being_refused(executor: ThreadPoolExecutor) -> None:
    engine = Gated()
    batcher = dynamic(executor, engine, size=1, queue=2)
    running = asyncio.ensure_future(batcher.submit("running", 0))
    await until(lambda: batcher.stats.running == 1)
    jobs = [asyncio.ensure_future(batcher.submit(f"job{i}", 5)) for i in range(4)]
    await until(lambda: batcher.stats.waiting == 2)
    await asyncio.sleep(0.05)
    assert batcher.stats.waiting == 2 and not any(j.done() for j in jobs)  # two wait for room, none refused
    engine.gate.set()
    assert await asyncio.gather(*jobs) == ["JOB0", "JOB1", "JOB2", "JOB3"]
    await running
    await batcher.stop()


async def test_a_failed_batch_is_rerun_alone_so_only_the_culprit_fails(executor: ThreadPoolExecutor) -> None:
    runs: list[list[str]] = []

    def run_batch(items: list[str]) -> list[str | Exception]:
        runs.append(list(items))
        if "bad" in items:
            raise RuntimeError("internal detail")
        if "refused" in items:
            raise InvalidRequest("a message meant for the client")
        return [i.upper() for i in items]

    batcher = dynamic(executor, run_batch, size=4)
    batcher.max_wait = 5.0  # wait for the full batch
    names = ["x", "bad", "refused", "y"]
    results = await asyncio.gather(*(batcher.submit(n, 0) for n in names), return_exceptions=True)
    assert runs == [names, ["x"], ["bad"], ["refused"], ["y"]]
    assert results[0] == "X" and results[3] == "Y"
    assert isinstance(results[1], GenerationFailed) and "internal detail" not in str(results[1])
    assert isinstance(results[1].__cause__, RuntimeError)  # the detail stays for the log
    assert isinstance(results[2], InvalidRequest)  # our own errors reach the client as they are
    await batcher.stop()


async def test_without_isolate_a_failed_batch_fails_together_and_is_not_rerun(executor: ThreadPoolExecutor) -> None:
    runs: list[list[str]] = []

    def run_batch(items: list[str]) -> list[str | Exception]:
        runs.append(list(items))
        raise RuntimeError("the whole batch")

    batcher = dynamic(executor, run_batch, size=2, isolate=False)
    batcher.max_wait = 5.0
    results = await asyncio.gather(batcher.submit("a", 0), batcher.submit("b", 0), return_exceptions=True)
    assert runs == [["a", "b"]]  # a text batch has streamed already: a rerun would stream twice
    assert all(isinstance(r, RuntimeError) for r in results)
    await batcher.stop()


class Countdown:
    """A decode loop in miniature: item "name:N" ends after N steps of a millisecond or two; records
    what each step admitted and how many items it advanced."""

    def __init__(self) -> None:
        self.left: dict[str, int] = {}
        self.admitted: list[list[str]] = []
        self.widths: list[int] = []
        self.step_gate = threading.Event()
        self.step_gate.set()

    def step(self, admitted: list[str]) -> list[tuple[str, str | Exception]]:
        self.step_gate.wait(5)
        time.sleep(0.001)
        self.admitted.append(list(admitted))
        for item in admitted:
            self.left[item] = int(item.split(":")[1])
        self.widths.append(len(self.left))
        done: list[tuple[str, str | Exception]] = []
        for item in list(self.left):
            self.left[item] -= 1
            if self.left[item] == 0:
                del self.left[item]
                done.append((item, f"done {item}"))
        return done

    def reset(self) -> None:
        self.left.clear()


def continuous(executor: ThreadPoolExecutor, engine: Countdown, queue: int = 16) -> ContinuousBatcher[str, str]:
    return ContinuousBatcher("c", engine.step, engine.reset, executor, BatchKnobs(2, 0, queue))


async def test_continuous_requests_join_the_running_batch_between_steps(executor: ThreadPoolExecutor) -> None:
    engine = Countdown()
    batcher = continuous(executor, engine)
    long = asyncio.ensure_future(batcher.submit("long:300", 0))
    await until(lambda: len(engine.admitted) >= 3)  # several steps in, `long` still running
    late = await batcher.submit("late:2", 0)
    assert late == "done late:2" and not long.done()  # it joined and finished while `long` ran on
    joined_at = next(i for i, a in enumerate(engine.admitted) if a == ["late:2"])
    assert joined_at > 0 and engine.admitted[0] == ["long:300"]
    assert await long == "done long:300"
    await batcher.stop()


async def test_continuous_batch_never_exceeds_its_size(executor: ThreadPoolExecutor) -> None:
    engine = Countdown()
    batcher = continuous(executor, engine)
    results = await asyncio.gather(*(batcher.submit(f"r{i}:3", 0) for i in range(5)))
    assert results == [f"done r{i}:3" for i in range(5)]
    assert max(engine.widths) == 2  # never more in flight than max_batch_size
    assert batcher.stats.items == 5 and batcher.stats.running == 0
    await batcher.stop()


async def test_stop_fails_every_waiter_of_a_static_batcher(executor: ThreadPoolExecutor) -> None:
    engine = Gated()
    batcher = dynamic(executor, engine, size=1)
    running = asyncio.ensure_future(batcher.submit("running", 0))
    await until(lambda: batcher.stats.running == 1)
    waiting = [asyncio.ensure_future(batcher.submit(f"w{i}", p)) for i, p in enumerate((0, 3))]
    await until(lambda: batcher.stats.waiting == 2)
    await batcher.stop()
    engine.gate.set()
    results = await asyncio.gather(running, *waiting, return_exceptions=True)
    assert all(isinstance(r, Overloaded) and "shutting down" in str(r) for r in results)  # none left hanging
    assert batcher.stats.waiting == 0


async def test_stop_fails_waiting_and_in_flight_requests_of_a_continuous_batcher(
    executor: ThreadPoolExecutor,
) -> None:
    engine = Countdown()
    batcher = continuous(executor, engine)
    in_flight = [asyncio.ensure_future(batcher.submit(f"f{i}:1000", 0)) for i in range(2)]
    await until(lambda: batcher.stats.running == 2)
    engine.step_gate.clear()  # hold the compute thread so the next request stays queued
    waiting = asyncio.ensure_future(batcher.submit("w:1", 0))
    await until(lambda: batcher.stats.waiting == 1)
    await batcher.stop()
    engine.step_gate.set()
    results = await asyncio.gather(*in_flight, waiting, return_exceptions=True)
    assert all(isinstance(r, Overloaded) and "shutting down" in str(r) for r in results)
    assert batcher.stats.waiting == 0


async def test_a_stopped_batcher_never_runs_again(executor: ThreadPoolExecutor) -> None:
    """A background request waiting for queue room when the model is unloaded must not start a new
    loop on the engine that is about to be freed: it fails like the rest, and so does any later one."""
    engine = Gated()
    batcher = dynamic(executor, engine, size=1, queue=1)
    running = asyncio.ensure_future(batcher.submit("running", 0))
    await until(lambda: batcher.stats.running == 1)
    queued = asyncio.ensure_future(batcher.submit("queued", 3))
    await until(lambda: batcher.stats.waiting == 1)
    waiting_for_room = asyncio.ensure_future(batcher.submit("late", 3))
    await asyncio.sleep(0.05)
    await batcher.stop()
    engine.gate.set()
    for outcome in await asyncio.gather(running, queued, waiting_for_room, return_exceptions=True):
        assert isinstance(outcome, Overloaded) and "shutting down" in str(outcome)
    with pytest.raises(Overloaded):
        await batcher.submit("after", 0)
    await asyncio.sleep(0.05)
    assert batcher._task is None and engine.batches in ([], [["running"]])  # nothing ran after the stop
