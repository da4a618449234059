"""Interactive before background, in the batcher: queue order by class then priority, aging within
background work, and preemption of background rows when interactive requests wait for a full batch.
A miniature engine (items "name:N" end after N steps) that can set rows aside and resume them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bitinglip.engines.batcher import BatchKnobs, ContinuousBatcher
from bitinglip.types import Priority
from tests.unit.test_batcher_base import until

BACKGROUND_LOW, BACKGROUND_HIGH, INTERACTIVE = int(Priority.LOW), int(Priority.HIGH), int(Priority.SYNC)


@pytest.fixture()
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


class Resumable:
    """Counts steps per item; a preempted item keeps its count and resumes where it was."""

    def __init__(self, preemptable: bool = True) -> None:
        self.left: dict[str, int] = {}
        self.paused: dict[str, int] = {}
        self.steps: dict[str, int] = {}  # steps each item was advanced, over all its stays
        self.admitted: list[list[str]] = []
        self.preempted: list[str] = []
        self.preemptable = preemptable
        self.gate = threading.Event()
        self.gate.set()
        self.cancelled: set[str] = set()
        self.discarded: list[str] = []
        self.fail_preempt = False

    def step(self, admitted: list[str]) -> list[tuple[str, str | Exception]]:
        self.gate.wait(5)
        time.sleep(0.001)
        self.admitted.append(list(admitted))
        done: list[tuple[str, str | Exception]] = []
        for item in admitted:
            if item in self.cancelled:  # an engine ends a cancelled request when it is admitted
                self.paused.pop(item, None)
                done.append((item, f"cancelled {item}"))
                continue
            self.left[item] = self.paused.pop(item, int(item.split(":")[1]))
        for item in list(self.left):
            self.left[item] -= 1
            self.steps[item] = self.steps.get(item, 0) + 1
            if self.left[item] == 0:
                del self.left[item]
                done.append((item, f"done {item}"))
        return done

    def preempt(self, items: list[str]) -> list[str]:
        if self.fail_preempt:
            raise RuntimeError("the engine broke while setting rows aside")
        set_aside = [i for i in items if i in self.left and self.preemptable]
        for item in set_aside:
            self.paused[item] = self.left.pop(item)
        self.preempted += set_aside
        return set_aside

    def discard(self, items: list[str]) -> None:
        self.discarded += items
        for item in items:
            self.paused.pop(item, None)

    def reset(self) -> None:
        self.left.clear()


def batcher(
    executor: ThreadPoolExecutor, engine: Resumable, size: int = 2, aging_s: float = 30.0, beside: int | None = None
) -> ContinuousBatcher[str, str]:
    knobs = BatchKnobs(size, 0, 64, continuous=True, aging_s=aging_s, background_beside_interactive=beside)
    return ContinuousBatcher(
        "s",
        engine.step,
        engine.reset,
        executor,
        knobs,
        None,
        preempt=engine.preempt,
        discard=engine.discard,
        is_cancelled=lambda item: item in engine.cancelled,
    )


async def test_an_interactive_request_preempts_background_rows_which_resume_and_finish(
    executor: ThreadPoolExecutor,
) -> None:
    engine = Resumable()
    b = batcher(executor, engine)
    background = [asyncio.ensure_future(b.submit(f"bg{i}:300", BACKGROUND_LOW)) for i in range(2)]
    await until(lambda: b.stats.running == 2 and len(engine.admitted) > 5)  # the batch is full of them
    steps_before = len(engine.admitted)
    assert await b.submit("chat:3", INTERACTIVE) == "done chat:3"
    assert len(engine.admitted) - steps_before <= 6  # it waited for no background row to finish
    assert len(engine.preempted) == 1 and not any(f.done() for f in background)
    assert await asyncio.gather(*background) == ["done bg0:300", "done bg1:300"]  # its job never fails
    assert engine.steps["bg0:300"] == engine.steps["bg1:300"] == 300  # resumed, nothing lost or repeated
    assert b.preempted == 1
    await b.stop()


async def test_the_lowest_background_row_makes_way_and_interactive_rows_never_do(
    executor: ThreadPoolExecutor,
) -> None:
    engine = Resumable()
    b = batcher(executor, engine, size=3)
    chat = asyncio.ensure_future(b.submit("chat:400", INTERACTIVE))
    high = asyncio.ensure_future(b.submit("high:400", BACKGROUND_HIGH))
    low = asyncio.ensure_future(b.submit("low:400", BACKGROUND_LOW))
    await until(lambda: b.stats.running == 3)
    assert await b.submit("chat2:2", INTERACTIVE) == "done chat2:2"
    assert engine.preempted == ["low:400"]
    await asyncio.gather(chat, high, low)
    await b.stop()


async def test_an_engine_that_keeps_a_row_keeps_it_in_flight(executor: ThreadPoolExecutor) -> None:
    """The engine decides: a row it cannot set aside (transformers, a row that has streamed) runs on,
    and the interactive request waits for a place as before."""
    engine = Resumable(preemptable=False)
    b = batcher(executor, engine, size=1)
    bg = asyncio.ensure_future(b.submit("bg:50", BACKGROUND_LOW))
    await until(lambda: b.stats.running == 1)
    assert await b.submit("chat:1", INTERACTIVE) == "done chat:1"
    assert bg.done() and b.preempted == 0  # the chat ran after it
    await b.stop()


async def test_interactive_first_then_background_by_priority(executor: ThreadPoolExecutor) -> None:
    engine = Resumable(preemptable=False)
    b = batcher(executor, engine, size=1)
    engine.gate.clear()  # hold the compute thread on a first step while the queue fills, in the worst order
    first = asyncio.ensure_future(b.submit("first:1", BACKGROUND_LOW))
    await until(lambda: b.stats.running == 1)
    queued = [
        asyncio.ensure_future(b.submit(name, priority))
        for name, priority in (("low:1", BACKGROUND_LOW), ("high:1", BACKGROUND_HIGH), ("chat:1", INTERACTIVE))
    ]
    await until(lambda: b.stats.waiting == 3)
    engine.gate.set()
    await asyncio.gather(first, *queued)
    order = [a[0] for a in engine.admitted if a]
    assert order == ["first:1", "chat:1", "high:1", "low:1"]
    await b.stop()


async def test_background_work_ages_so_nothing_starves(executor: ThreadPoolExecutor) -> None:
    """With aging at 50 ms per level, a low-priority job that waited 0.25 s outranks a high-priority
    one that just arrived (3 - 5 < 1); interactive requests still come before both."""
    engine = Resumable(preemptable=False)
    b = batcher(executor, engine, size=1, aging_s=0.05)
    engine.gate.clear()
    first = asyncio.ensure_future(b.submit("first:1", BACKGROUND_LOW))
    await until(lambda: b.stats.running == 1)
    low = asyncio.ensure_future(b.submit("low:1", BACKGROUND_LOW))
    await asyncio.sleep(0.25)
    high = asyncio.ensure_future(b.submit("high:1", BACKGROUND_HIGH))
    chat = asyncio.ensure_future(b.submit("chat:1", INTERACTIVE))
    await until(lambda: b.stats.waiting == 3)
    engine.gate.set()
    await asyncio.gather(first, low, high, chat)
    assert [a[0] for a in engine.admitted if a] == ["first:1", "chat:1", "low:1", "high:1"]
    await b.stop()


@pytest.mark.parametrize("beside", [0, 1])
async def test_background_rows_beside_interactive_ones_are_capped(executor: ThreadPoolExecutor, beside: int) -> None:
    """A CPU's rule: while an interactive request runs, at most `beside` background rows run with it,
    even with free places in the batch (each row slows every other); the rest wait or are set aside,
    and all of them finish once the interactive one is done."""
    engine = Resumable()
    b = batcher(executor, engine, size=8, beside=beside)
    background = [asyncio.ensure_future(b.submit(f"bg{i}:200", BACKGROUND_LOW)) for i in range(3)]
    await until(lambda: b.stats.running == 3)  # no interactive work: background takes every place
    widths: list[int] = []
    chat = asyncio.ensure_future(b.submit("chat:100", INTERACTIVE))
    while not chat.done():
        widths.append(len(engine.left))
        await asyncio.sleep(0.005)
    assert await chat == "done chat:100"
    assert len(engine.preempted) >= 3 - beside
    assert max(widths[len(widths) // 2 :]) <= 1 + beside  # once settled: the chat and `beside` others
    assert await asyncio.gather(*background) == [f"done bg{i}:200" for i in range(3)]
    assert all(engine.steps[f"bg{i}:200"] == 200 for i in range(3))
    await b.stop()


async def test_without_a_cap_background_rows_fill_the_free_places(executor: ThreadPoolExecutor) -> None:
    """A GPU's rule (no cap): an interactive request with a free place preempts nobody."""
    engine = Resumable()
    b = batcher(executor, engine, size=8, beside=None)
    background = [asyncio.ensure_future(b.submit(f"bg{i}:100", BACKGROUND_LOW)) for i in range(3)]
    await until(lambda: b.stats.running == 3)
    assert await b.submit("chat:5", INTERACTIVE) == "done chat:5"
    assert engine.preempted == []
    await asyncio.gather(*background)
    await b.stop()


async def test_a_set_aside_job_that_is_cancelled_ends_at_once_and_is_forgotten(executor: ThreadPoolExecutor) -> None:
    """With the CPU's cap of 0, a preempted job would wait for the interactive traffic to stop; once
    cancelled it is taken at once and ends. A set-aside job whose caller went away is discarded by the
    engine, which holds nothing for it afterwards."""
    engine = Resumable()
    b = batcher(executor, engine, size=4, beside=0)
    job = asyncio.ensure_future(b.submit("job:100000", BACKGROUND_LOW))
    gone = asyncio.ensure_future(b.submit("gone:100000", BACKGROUND_LOW))
    await until(lambda: b.stats.running == 2)
    chat = asyncio.ensure_future(b.submit("chat:100000", INTERACTIVE))
    await until(lambda: set(engine.paused) == {"job:100000", "gone:100000"})
    engine.cancelled.add("job:100000")
    assert await asyncio.wait_for(job, 5) == "cancelled job:100000"  # while the chat still runs
    gone.cancel()
    await until(lambda: engine.discarded == ["gone:100000"])
    assert engine.paused == {} and not chat.done()
    chat.cancel()
    await b.stop()


async def test_an_engine_failing_to_preempt_fails_its_batch_not_the_model(executor: ThreadPoolExecutor) -> None:
    engine = Resumable()
    b = batcher(executor, engine, size=1)
    bg = asyncio.ensure_future(b.submit("bg:100000", BACKGROUND_LOW))
    await until(lambda: b.stats.running == 1)
    engine.fail_preempt = True
    chat = asyncio.ensure_future(b.submit("chat:3", INTERACTIVE))
    with pytest.raises(RuntimeError, match="setting rows aside"):
        await asyncio.wait_for(bg, 5)  # its state is unknown: it fails with the reason
    engine.fail_preempt = False
    assert await asyncio.wait_for(chat, 5) == "done chat:3"  # the model goes on serving
    assert await asyncio.wait_for(b.submit("next:2", INTERACTIVE), 5) == "done next:2"
    await b.stop()
