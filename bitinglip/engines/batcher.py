"""Per-model batchers. A shared base holds what both loop strategies need: a bounded priority queue,
a "batch full" wake-up and a deadline counted from the oldest waiting request (Ray Serve's design);
one compute thread runs the work.

- DynamicBatcher (static batches): a batch runs to its end; output count equals input count or
  every request of the batch fails with the reason.
- ContinuousBatcher (iteration-level): new requests join the running batch between decode steps,
  so a request never waits for a whole batch to drain (what static batching loses with drifting
  clients). Used for text when the engine supports it.

A full queue refuses at once (Overloaded, with Retry-After) instead of queueing forever.

Interactive before background (docs/architecture.md §3.14): requests someone waits on (priority 0:
sync and streaming) are taken before any background work (async jobs by their priority, then batch
lines) at every step: in the queue, at admission into the running batch, and by preemption, where the
engine can: when interactive requests wait and the batch is full, background rows make way and go back
to the queue, keeping their place (the llama.cpp engine resumes them where they were, transformers
restarts them); their jobs never fail for it. While interactive requests run, at most
`background_beside_interactive` background rows run beside them: on a CPU every row slows every other
row (a step costs about as many times more as it has rows), so background work takes only the time
interactive traffic leaves; on a GPU rows are nearly free and there is no limit. Within background
work, priorities age: one level per `aging_s` waited, so it is late but never starved by other
background work.

One request must not fail its batch: an engine may put an exception in a request's result slot (that
request fails, the others get their results), and when a whole static batch raises, its requests are
run again one by one (`isolate=True`) so only the one that also fails alone fails, with
`GenerationFailed`: a clear message in the error envelope, the detail in the log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bitinglip.engines.types import GenerationFailed
from bitinglip.errors import BitingLipError, Overloaded

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


@dataclass
class _Pending(Generic[I, R]):
    priority: int
    seq: int
    arrived: float
    item: I
    future: asyncio.Future[R] = field(repr=False)

    @property
    def interactive(self) -> bool:
        return self.priority <= INTERACTIVE

    def rank(self, now: float, aging_s: float) -> tuple[int, float, int]:
        """Interactive first, in arrival order; then background work by priority, raised one level
        per `aging_s` waited, then arrival."""
        if self.interactive:
            return (0, 0.0, self.seq)
        return (1, self.priority - (now - self.arrived) / aging_s, self.seq)


def _fail(pending: Iterable[_Pending[I, R]], exc: BaseException) -> None:
    """Every waiter still waiting gets the reason; none is left hanging."""
    for p in pending:
        if not p.future.done():
            p.future.set_exception(exc)


def _settle(p: _Pending[I, R], outcome: R | Exception) -> None:
    """Give a waiter its result, or its own failure when the engine put an exception in its slot."""
    if p.future.done():
        return
    if isinstance(outcome, Exception):
        p.future.set_exception(outcome)
    else:
        p.future.set_result(outcome)


def _alone(exc: Exception) -> Exception:
    """What a request that failed when run alone is told: our own errors as they are (their message
    is meant for clients), anything else as `GenerationFailed` (the detail was logged)."""
    if isinstance(exc, BitingLipError):
        return exc
    failed = GenerationFailed()
    failed.__cause__ = exc
    return failed


@dataclass
class BatcherStats:
    waiting: int
    running: int
    batches: int
    items: int


@dataclass(frozen=True)
class BatchKnobs:
    """One model's batching settings (`Settings.batching_for`); `continuous` asks engines that can
    for iteration-level batching (`Settings.text_batching`); `aging_s`: background work gains one
    priority level per this many seconds waited (`Settings.priority_aging_s`)."""

    max_batch_size: int
    max_wait_ms: float
    max_queue: int
    continuous: bool = False
    aging_s: float = 30.0
    background_beside_interactive: int | None = None  # continuous: background rows while interactive run


INTERACTIVE = 0  # Priority.SYNC: requests someone is waiting on


class Batcher(ABC, Generic[I, R]):
    """The queue both loop strategies share: admission, priority order, the wait for a batch, stop.
    A subclass supplies `_loop`, which takes requests with `_take` and settles their futures."""

    def __init__(
        self,
        name: str,
        executor: Executor,
        knobs: BatchKnobs,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.max_batch_size = knobs.max_batch_size
        self.max_wait = knobs.max_wait_ms / 1000.0
        self.max_queue = knobs.max_queue
        self.aging_s = knobs.aging_s
        self.background_beside_interactive = knobs.background_beside_interactive
        self._executor = executor
        self._on_batch = on_batch
        self._queue: list[_Pending[I, R]] = []  # small (max_queue): ranked when taken, as ages change
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._room = asyncio.Event()  # set when requests leave the queue
        self._running = 0
        self._batches = 0
        self._items = 0
        self._last_batch_seconds = 1.0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self.name}")
            self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """The loop only ends by `stop`; if it died of a bug instead, nobody may wait on it forever:
        its requests fail, and the next submit starts a new loop."""
        if task.cancelled() or self._task is not task:
            return
        exc = task.exception() or RuntimeError("the batch loop ended")
        log.error("batch loop of %s died: %r", self.name, exc)
        self._task = None
        _fail(self._release_running(), exc)
        _fail(self._queue, exc)
        self._queue.clear()
        self._room.set()

    async def stop(self) -> None:
        """End the loop for good; every request waiting or being computed fails with the reason, and so
        does any later submit (the engine behind it may be unloaded next)."""
        self._closed = True
        shutting_down = Overloaded(f"model {self.name!r} is shutting down")
        _fail(self._release_running(), shutting_down)  # first: a cancelled loop forgets its batch
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        _fail(self._queue, shutting_down)
        self._queue.clear()
        self._room.set()

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(len(self._queue), self._running, self._batches, self._items)

    async def submit(self, item: I, priority: int) -> R:
        """Interactive requests (priority 0) are refused with 503 once `max_queue` of them wait;
        background work (async jobs, batches) instead waits for room, and never takes the room that
        interactive requests need: a flood of jobs cannot turn sync traffic away."""
        if priority <= INTERACTIVE:
            waiting = sum(1 for p in self._queue if p.interactive)
            if waiting >= self.max_queue:
                raise Overloaded(
                    f"model {self.name!r} has {waiting} requests waiting (max {self.max_queue})",
                    retry_after=self._last_batch_seconds,
                )
        else:
            while len(self._queue) >= self.max_queue and not self._closed:
                self._room.clear()
                await self._room.wait()
        if self._closed:  # stopped while this one waited for room: never start a loop on it again
            raise Overloaded(f"model {self.name!r} is shutting down")
        self.start()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(priority, next(self._seq), time.monotonic(), item, future))
        self._changed.set()
        return await future

    @abstractmethod
    async def _loop(self) -> None:
        """Run forever (until `stop` cancels it): take waiting requests, compute, settle them."""

    @abstractmethod
    def _release_running(self) -> list[_Pending[I, R]]:
        """Forget the requests being computed and return them (`stop` fails them)."""

    async def _wait_for_batch(self) -> None:
        """Until something waits, then until a batch is gathered or the oldest has waited `max_wait`."""
        while not self._queue:
            self._changed.clear()
            await self._changed.wait()
        deadline = min(p.arrived for p in self._queue) + self.max_wait
        while not self._gathered():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break

    def _gathered(self) -> bool:
        """Whether a first batch may start before `max_wait`: when it is full."""
        return len(self._queue) >= self.max_batch_size

    def _take(self, room: int | None = None, background_room: int | None = None) -> list[_Pending[I, R]]:
        """Up to `room` (default: a full batch) waiting requests, best rank first, of which at most
        `background_room` (None: no limit) background ones."""
        limit = self.max_batch_size if room is None else room
        if gone := [p.item for p in self._queue if p.future.done()]:  # cancelled while waiting
            self._queue = [p for p in self._queue if not p.future.done()]
            self._forget(gone)
        self._room.set()
        if limit <= 0 or not self._queue:
            return []
        now = time.monotonic()
        self._queue.sort(key=lambda p: p.rank(now, self.aging_s))
        taken: list[_Pending[I, R]] = []
        left: list[_Pending[I, R]] = []
        for p in self._queue:
            if len(taken) < limit and (
                p.interactive or background_room is None or background_room > 0 or self._is_cancelled(p.item)
            ):
                taken.append(p)
                if not p.interactive and background_room is not None:
                    background_room -= 1
            else:
                left.append(p)
        self._queue = left
        return taken

    def _forget(self, items: list[I]) -> None:
        """Items whose callers went away before they ran: an engine may hold state for them."""

    def _is_cancelled(self, item: I) -> bool:
        """A cancelled item is taken at once (past any limit on background work) so it ends now."""
        return False


class _CountMismatch(RuntimeError):
    """The engine broke the one-result-per-request contract."""


class DynamicBatcher(Batcher[I, R]):
    """Static batches: `run_batch(items)` runs on the compute thread and returns one result (or the
    exception of that item alone) per item, in order."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[I]], Sequence[R | Exception]],
        executor: Executor,
        knobs: BatchKnobs,
        on_batch: Callable[[int], None] | None = None,
        *,
        isolate: bool = True,
    ) -> None:
        """`isolate`: when a batch raises, run its requests again one by one. Only for engines whose
        `run_batch` has no side effects a rerun would repeat (a text batch has already streamed)."""
        super().__init__(name, executor, knobs, on_batch)
        self.isolate = isolate
        self._run_batch = run_batch
        self._batch: list[_Pending[I, R]] = []  # the batch being computed

    async def _loop(self) -> None:
        while True:
            await self._wait_for_batch()
            batch = self._take()
            if not batch:
                continue
            await self._execute(batch)

    def _release_running(self) -> list[_Pending[I, R]]:
        batch, self._batch = self._batch, []
        return batch

    async def _run(self, items: list[I]) -> Sequence[R | Exception]:
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, items)
        if len(results) != len(items):
            raise _CountMismatch(f"engine returned {len(results)} results for {len(items)} requests")
        return results

    async def _execute(self, batch: list[_Pending[I, R]]) -> None:
        items = [p.item for p in batch]
        self._batch = batch
        self._running = len(batch)
        started = time.monotonic()
        try:
            results = await self._run(items)
        except _CountMismatch as exc:  # an engine bug, not an input: rerunning would not single anyone out
            log.error("%s on %s", exc, self.name)
            _fail(batch, exc)
        except Exception as exc:
            if self.isolate and len(batch) == 1:
                log.exception("a request failed on its own on %s", self.name)
                _settle(batch[0], _alone(exc))
            elif self.isolate:
                log.warning("batch of %d failed on %s (%r); running its requests alone", len(items), self.name, exc)
                await self._run_alone(batch)
            else:
                log.exception("batch of %d failed on %s", len(items), self.name)
                _fail(batch, exc)
        else:
            for p, result in zip(batch, results, strict=True):
                _settle(p, result)
        finally:
            self._batch = []
            self._running = 0
            self._batches += 1
            self._items += len(items)
            self._last_batch_seconds = time.monotonic() - started
            if self._on_batch is not None:
                self._on_batch(len(items))

    async def _run_alone(self, batch: list[_Pending[I, R]]) -> None:
        """Each request of a failed batch on its own: those that succeed get their results (a fault
        that only a whole batch hits, such as running out of memory, goes away too), and a request
        that fails again is the culprit and fails alone."""
        for p in batch:
            if p.future.done():  # its caller went away meanwhile
                continue
            try:
                outcome = (await self._run([p.item]))[0]
            except Exception as exc:
                log.exception("a request failed on its own on %s", self.name)
                outcome = _alone(exc)
            _settle(p, outcome)


class ContinuousBatcher(Batcher[I, R]):
    """`step(admitted)` runs on the compute thread: it adds the admitted items to the engine's running
    batch, advances everyone one iteration and returns the (item, result) pairs that finished; a result
    that is an exception fails that item alone. If `step` itself raises, the running batch's state is
    lost and everything in flight fails with the reason (the engine isolates what it can first).

    `preempt(items)`, where the engine has it, runs on the compute thread between steps: the engine
    sets aside those of `items` it can (background rows) and returns them; they go back to the queue
    with their rank and are passed to `step` again when taken."""

    def __init__(
        self,
        name: str,
        step: Callable[[list[I]], Sequence[tuple[I, R | Exception]]],
        reset: Callable[[], None],
        executor: Executor,
        knobs: BatchKnobs,
        on_batch: Callable[[int], None] | None = None,
        preempt: Callable[[list[I]], list[I]] | None = None,
        discard: Callable[[list[I]], None] | None = None,
        is_cancelled: Callable[[I], bool] | None = None,
    ) -> None:
        super().__init__(name, executor, knobs, on_batch)
        self._step = step
        self._reset = reset
        self._preempt = preempt
        self._discard = discard
        self._cancelled = is_cancelled
        self._in_flight: dict[int, _Pending[I, R]] = {}
        self.preempted = 0  # rows set aside for interactive requests, since the start

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._in_flight:
                await self._wait_for_batch()  # idle engine: gather a first batch briefly
            try:
                await self._make_way()
            except Exception as exc:  # the engine's state is unknown now, as after a failed step
                log.exception("preempting rows failed on %s", self.name)
                self._reset()
                _fail(self._in_flight.values(), exc)
                self._in_flight.clear()
                continue
            admitted = self._take(self.max_batch_size - len(self._in_flight), self._background_room())
            if not admitted and not self._in_flight:
                continue
            for p in admitted:
                self._in_flight[id(p.item)] = p
            self._running = len(self._in_flight)
            try:
                finished = await loop.run_in_executor(self._executor, self._step, [p.item for p in admitted])
            except Exception as exc:
                log.exception("continuous batch of %d failed on %s", len(self._in_flight), self.name)
                self._reset()
                _fail(self._in_flight.values(), exc)
                self._in_flight.clear()
                continue
            if admitted and self._on_batch is not None:
                self._on_batch(len(self._in_flight))
            for item, result in finished:
                p = self._in_flight.pop(id(item))
                self._items += 1
                _settle(p, result)
            self._batches += 1 if admitted else 0
            self._running = len(self._in_flight)

    def _gathered(self) -> bool:
        """Also as soon as an interactive request waits (one whose caller is still there): requests
        arriving after it join at the next step, so gathering would only add `max_wait` to its time to
        first token. Background work alone still gathers, so that a burst of jobs is prefilled
        together."""
        return super()._gathered() or any(p.interactive and not p.future.done() for p in self._queue)

    def _forget(self, items: list[I]) -> None:
        if self._discard is not None:  # on the compute thread, between steps, like everything the engine does
            self._executor.submit(self._discard, items)

    def _is_cancelled(self, item: I) -> bool:
        return self._cancelled is not None and self._cancelled(item)

    def _interactive_work(self) -> bool:
        return any(p.interactive for p in self._in_flight.values()) or any(
            p.interactive and not p.future.done() for p in self._queue
        )

    def _background_room(self) -> int | None:
        """Background rows that may still join: no limit while no interactive request runs or waits."""
        if self.background_beside_interactive is None or not self._interactive_work():
            return None
        running = sum(1 for p in self._in_flight.values() if not p.interactive)
        return max(0, self.background_beside_interactive - running)

    def _victims(self) -> list[_Pending[I, R]]:
        """Background rows to set aside for interactive work: as many as the interactive requests
        waiting lack places, and those past `background_beside_interactive`; the lowest ranked first
        (lowest priority, then the latest arrived, which has done the least)."""
        if not self._interactive_work():
            return []
        waiting = sum(1 for p in self._queue if p.interactive and not p.future.done())
        short = waiting - (self.max_batch_size - len(self._in_flight))
        now = time.monotonic()
        background = [p for p in self._in_flight.values() if not p.interactive]
        over = 0 if self.background_beside_interactive is None else len(background) - self.background_beside_interactive
        background.sort(key=lambda p: p.rank(now, self.aging_s), reverse=True)
        return background[: max(short, over, 0)]

    async def _make_way(self) -> None:
        if self._preempt is None or not (victims := self._victims()):
            return
        loop = asyncio.get_running_loop()
        set_aside = await loop.run_in_executor(self._executor, self._preempt, [p.item for p in victims])
        moved = {id(item) for item in set_aside}
        for p in victims:
            if id(p.item) in moved:
                del self._in_flight[id(p.item)]
                self._queue.append(p)  # its rank is kept: seq, priority and arrival are unchanged
        self.preempted += len(moved)
        self._running = len(self._in_flight)

    def _release_running(self) -> list[_Pending[I, R]]:
        running = list(self._in_flight.values())
        self._in_flight.clear()
        return running
