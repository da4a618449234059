"""The model pool's memory management (bitinglip/engines/pool.py, room.py, bitinglip/keep_alive.py):
eviction by bytes against a worker's budget and by count, pinned and busy models left alone, a load
that cannot fit refused without unloading anything, keep-alive expiry on an injected clock, unload by
hand. The pool's real code runs on a real model store and real batchers; the engines are `Sized`, a
small engine of our own implementing the `Engine` protocol: it is the pool's input (what a backend
plugs in), not a stand-in for a library, and it lets a test choose bytes and hold a request running.
No HTTP, no Prefect, no model library."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bitinglip import keep_alive
from bitinglip.config import Settings
from bitinglip.db.workers import loaded_model
from bitinglip.engines.batcher import Batcher, BatchKnobs, DynamicBatcher
from bitinglip.engines.embeddings import EmbeddingRequest, EmbeddingResult
from bitinglip.engines.pool import ModelPool
from bitinglip.engines.protocol import Engine, OnBatch, Placement
from bitinglip.engines.room import Resident, plan_room
from bitinglip.engines.types import Priority
from bitinglip.errors import Conflict, InvalidRequest, NoRoomToLoad, Overloaded
from bitinglip.models.store import ModelStore
from bitinglip.schemas import EmbeddingParams, TextGenerationParams

MB = 1_000_000


class Sized:
    """An embedding engine holding `nbytes`; each batch waits for `gate` (set: runs at once)."""

    def __init__(self, name: str, nbytes: int, gate: threading.Event) -> None:
        self.name = name
        self.nbytes = nbytes
        self.gate = gate
        self.unloaded = False

    def make_batcher(self, executor: Executor, knobs: BatchKnobs, on_batch: OnBatch | None) -> Batcher[Any, Any]:
        return DynamicBatcher(self.name, self.run_batch, executor, knobs, on_batch)

    def run_batch(self, requests: list[EmbeddingRequest]) -> list[EmbeddingResult | Exception]:
        self.gate.wait(30)
        return [EmbeddingResult([[1.0] for _ in r.texts], len(r.texts), 0.0, len(requests)) for r in requests]

    def memory_bytes(self) -> int:
        return 0 if self.unloaded else self.nbytes

    def unload(self) -> None:
        self.unloaded = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Bench:
    """A store of models with weights of chosen sizes, and the engines the pool loaded for them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.store = ModelStore(tmp_path / "models")
        self.engines: dict[str, Sized] = {}
        self.actual: dict[str, int] = {}  # bytes an engine holds once loaded, when not its file size
        self.gate = threading.Event()
        self.gate.set()
        self.clock = Clock()

    def install(self, name: str, nbytes: int, holds: int | None = None) -> str:
        with self.store.staging() as staged:
            (staged / "weights.bin").write_bytes(b"\0" * nbytes)
            manifest = self.store.install(staged, name=name, revision="v1", task="embedding", source=f"file:///{name}")
        if holds is not None:
            self.actual[manifest.id] = holds
        return manifest.id

    def loader(self, model_id: str, path: Path, at: Placement) -> Engine:
        nbytes = self.actual.get(model_id, sum(f.stat().st_size for f in path.glob("*.bin")))
        self.engines[model_id] = Sized(model_id, nbytes, self.gate)
        return self.engines[model_id]

    def pool(self, **settings: Any) -> ModelPool:
        config = Settings(**{"home": self.tmp_path, "device": "cpu", "worker_models": [], **settings})
        return ModelPool(config, self.store, engines={("embedding", "transformers"): self.loader}, clock=self.clock)


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return Bench(tmp_path)


@pytest.fixture
async def pool_of(bench: Bench) -> AsyncIterator[Callable[..., ModelPool]]:
    made: list[ModelPool] = []

    def make(**settings: Any) -> ModelPool:
        made.append(bench.pool(**settings))
        return made[-1]

    yield make
    bench.gate.set()
    for pool in made:
        await pool.close()


def ids(pool: ModelPool) -> list[str]:
    return [m["id"] for m in pool.loaded()]


async def until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never reached the expected state")


async def held_running(pool: ModelPool, bench: Bench, model_id: str, **kw: Any) -> asyncio.Task[EmbeddingResult]:
    """A request on `model_id` that stays running until `bench.gate` is set."""
    bench.gate.clear()
    task = asyncio.create_task(pool.embed(model_id, ["hold"], Priority.SYNC, **kw))
    await until(lambda: any(m["id"] == model_id and m["running"] for m in pool.loaded()))
    return task


# -- eviction by bytes and by count


async def test_least_recently_used_idle_models_make_room_within_the_budget(
    bench: Bench, pool_of: Callable[..., ModelPool]
) -> None:
    a, b, c = (bench.install(n, 3 * MB) for n in "abc")
    pool = pool_of(worker_memory_budget_bytes=int(7.5 * MB))
    await pool.get(a)
    await pool.get(b)
    await pool.embed(a, ["used again"], Priority.SYNC)  # a is now more recent than b
    await pool.get(c)
    assert ids(pool) == [a, c]
    assert bench.engines[b].unloaded and not bench.engines[a].unloaded
    assert pool.used_bytes == 6 * MB and pool.budget_bytes == int(7.5 * MB)


async def test_pinned_and_busy_models_are_never_unloaded_for_room(
    bench: Bench, pool_of: Callable[..., ModelPool]
) -> None:
    a, b, c = (bench.install(n, 3 * MB) for n in "abc")
    pool = pool_of(worker_memory_budget_bytes=int(7.5 * MB))
    await pool.get(a)
    await pool.get(b)
    pool.pinned = frozenset({a})
    running = await held_running(pool, bench, b)
    with pytest.raises(NoRoomToLoad) as refused:
        await pool.get(c)
    error = refused.value
    assert error.status_code == 503 and error.code == "memory_budget" and error.retry_after  # b goes idle
    assert error.message == "loading c@v1 needs 3.0 MB; worker budget 7.5 MB, pinned/busy models hold 6.0 MB"
    assert ids(pool) == [a, b] and not bench.engines[a].unloaded  # a refused load unloads nothing
    bench.gate.set()
    await running
    await pool.get(c)  # b is idle now: it goes, the pinned a stays
    assert ids(pool) == [a, c]


async def test_a_model_larger_than_the_budget_is_refused_and_says_so(
    bench: Bench, pool_of: Callable[..., ModelPool]
) -> None:
    big = bench.install("big", 9 * MB)
    pool = pool_of(worker_memory_budget_bytes=int(7.5 * MB))
    with pytest.raises(NoRoomToLoad, match=r"needs 9\.0 MB \(more than the whole budget\); worker budget 7\.5 MB"):
        await pool.get(big)
    assert ids(pool) == [] and big not in bench.engines  # refused on the estimate, before loading


async def test_a_load_is_held_to_what_it_really_takes(bench: Bench, pool_of: Callable[..., ModelPool]) -> None:
    """The estimate is the files' size; an engine may hold more (llama.cpp's KV cache): once loaded,
    the pool makes room for what it measured, or gives the model back."""
    a = bench.install("a", 3 * MB)
    kv = bench.install("kv", 1 * MB, holds=6 * MB)
    pool = pool_of(worker_memory_budget_bytes=int(7.5 * MB))
    await pool.get(a)
    pool.pinned = frozenset({a})
    with pytest.raises(NoRoomToLoad, match=r"loading kv@v1 needs 6\.0 MB"):
        await pool.get(kv)
    assert bench.engines[kv].unloaded and ids(pool) == [a]
    pool.pinned = frozenset()
    await pool.get(kv)  # the measured 6 MB is the estimate now: a goes first
    assert ids(pool) == [kv] and bench.engines[a].unloaded
    assert pool.used_bytes == 6 * MB


async def test_the_model_count_caps_too(bench: Bench, pool_of: Callable[..., ModelPool]) -> None:
    a, b, c = (bench.install(n, MB) for n in "abc")
    pool = pool_of(max_loaded_models=2)  # no byte budget
    assert pool.budget_bytes is None and pool.max_loaded == 2
    await pool.get(a)
    await pool.get(b)
    await pool.get(c)
    assert ids(pool) == [b, c]
    pool.pinned = frozenset({b})
    running = await held_running(pool, bench, c)
    with pytest.raises(NoRoomToLoad, match=r"needs a free slot; this worker holds at most 2 models"):
        await pool.get(a)
    bench.gate.set()
    await running


def test_the_plan_is_least_recently_used_first_and_all_or_nothing() -> None:
    resident = [
        Resident("old", 3),
        Resident("pinned", 3, pinned=True),
        Resident("busy", 3, busy=True),
        Resident("new", 3),
    ]
    assert plan_room(resident, "m", 3, 12, 10) == ["old"]
    assert plan_room(resident, "m", 6, 12, 10) == ["old", "new"]
    assert plan_room(resident, "m", 1, None, 4) == ["old"]  # by count alone
    with pytest.raises(NoRoomToLoad, match="pinned/busy models hold"):
        plan_room(resident, "m", 7, 12, 10)


# -- keep-alive


async def test_an_idle_model_is_unloaded_when_its_keep_alive_runs_out(
    bench: Bench, pool_of: Callable[..., ModelPool]
) -> None:
    a = bench.install("a", MB)
    pool = pool_of(model_keep_alive="10m")
    await pool.embed(a, ["hi"], Priority.SYNC)
    [entry] = pool.loaded()
    assert (entry["keep_alive_s"], entry["expires_in_s"], entry["idle_s"]) == (600.0, 600.0, 0.0)
    bench.clock.now += 599
    assert await pool.expire() == []
    assert pool.loaded()[0]["expires_in_s"] == 1.0 and pool.loaded()[0]["idle_s"] == 599.0
    bench.clock.now += 1
    assert await pool.expire() == [a]
    assert ids(pool) == [] and bench.engines[a].unloaded


async def test_a_busy_model_waits_out_its_requests(bench: Bench, pool_of: Callable[..., ModelPool]) -> None:
    a = bench.install("a", MB)
    pool = pool_of(model_keep_alive="10m")
    running = await held_running(pool, bench, a, keep_alive_value=0)
    bench.clock.now += 3600
    assert await pool.expire() == []  # keep-alive counts from the end of the last request
    assert pool.loaded()[0]["expires_in_s"] == 0.0 and pool.loaded()[0]["idle_s"] == 0.0
    bench.gate.set()
    await running
    assert await pool.expire() == [a]  # keep_alive 0: unloaded right after


async def test_keep_alive_forever_pins_and_the_workers_own_models_stay(
    bench: Bench, pool_of: Callable[..., ModelPool]
) -> None:
    a, b, own = (bench.install(n, MB) for n in ("a", "b", "own"))
    pool = pool_of(model_keep_alive="5m", worker_memory_budget_bytes=10 * MB, worker_models=["own"])
    await pool.embed(a, ["x"], Priority.SYNC, "-1")
    await pool.get(b)
    await pool.get(own)
    pool.pinned = frozenset({b})
    bench.clock.now += 10**9
    assert await pool.expire() == []
    expiring = {m["id"]: (m["keep_alive_s"], m["expires_in_s"], m["pinned"]) for m in pool.loaded()}
    assert expiring == {a: (-1.0, None, False), b: (300.0, None, True), own: (-1.0, None, False)}


async def test_a_request_lengthens_a_keep_alive_but_never_shortens_it(
    bench: Bench, pool_of: Callable[..., ModelPool]
) -> None:
    """Unlike Ollama (one user): a tenant's request cannot cut short what an admin or another tenant set,
    nor unload a shared model with 0; the load route sets it exactly."""
    a = bench.install("a", MB)
    pool = pool_of(model_keep_alive="10m")
    await pool.load(a, "1h")
    assert pool.loaded()[0]["keep_alive_s"] == 3600.0
    await pool.embed(a, ["x"], Priority.SYNC)  # the default (10m) is shorter: kept at 1h
    await pool.embed(a, ["x"], Priority.SYNC, 0)
    await pool.embed(a, ["x"], Priority.SYNC, "90s")
    assert pool.loaded()[0]["keep_alive_s"] == 3600.0
    await pool.embed(a, ["x"], Priority.SYNC, "2h")
    assert pool.loaded()[0]["keep_alive_s"] == 7200.0
    await pool.embed(a, ["x"], Priority.SYNC, -1)
    assert pool.loaded()[0]["keep_alive_s"] == -1.0
    await pool.load(a, "5m")  # the admin's route sets it as given
    assert pool.loaded()[0]["keep_alive_s"] == 300.0


async def test_the_sweep_runs_at_once_after_keep_alive_zero(bench: Bench, pool_of: Callable[..., ModelPool]) -> None:
    a = bench.install("a", MB)
    pool = pool_of()
    sweep = asyncio.create_task(pool.run_expiry(every_s=60))  # only the wake-up can explain an unload
    try:
        await pool.embed(a, ["x"], Priority.SYNC, 0)
        await until(lambda: ids(pool) == [])
    finally:
        sweep.cancel()
    assert bench.engines[a].unloaded


async def test_a_bad_keep_alive_is_refused_before_anything_loads(
    bench: Bench, pool_of: Callable[..., ModelPool]
) -> None:
    a = bench.install("a", MB)
    pool = pool_of()
    with pytest.raises(InvalidRequest, match="keep_alive") as refused:
        await pool.embed(a, ["x"], Priority.SYNC, "-5m")
    assert refused.value.param == "keep_alive" and ids(pool) == []


# -- unload by hand, and what the heartbeat reports


async def test_unload_refuses_a_busy_model_unless_forced(bench: Bench, pool_of: Callable[..., ModelPool]) -> None:
    a, b = bench.install("a", MB), bench.install("b", MB)
    pool = pool_of()
    await pool.get(b)
    assert await pool.unload("b") == [b] and ids(pool) == []
    assert await pool.unload("b") == []  # not loaded: nothing to do
    running = await held_running(pool, bench, a)
    with pytest.raises(Conflict, match=r"a@v1 has 0 request\(s\) waiting and 1 running"):
        await pool.unload(a)
    forced = asyncio.create_task(pool.unload(a, force=True))
    with pytest.raises(Overloaded, match="shutting down"):
        await running  # the request in flight is told
    bench.gate.set()  # the compute thread finishes the batch it was in, then unloads
    assert await forced == [a] and bench.engines[a].unloaded
    with pytest.raises(InvalidRequest):
        await pool.unload("../x")


async def test_loaded_reports_what_ps_shows(bench: Bench, pool_of: Callable[..., ModelPool]) -> None:
    a = bench.install("a", 2 * MB)
    pool = pool_of(model_keep_alive="30m")
    await pool.load(a)
    bench.clock.now += 42
    [entry] = pool.loaded()
    assert entry["memory_bytes"] == 2 * MB and entry["backend"] == "transformers" and entry["pinned"] is False
    assert (entry["keep_alive_s"], entry["expires_in_s"], entry["idle_s"]) == (1800.0, 1758.0, 42.0)
    assert entry["last_used"].endswith("+00:00")
    typed = loaded_model(entry)  # as the heartbeat stores it, and the gateway reads it back
    assert (typed["keep_alive_s"], typed["expires_in_s"], typed["idle_s"]) == (1800.0, 1758.0, 42.0)
    assert loaded_model({**entry, "expires_in_s": None})["expires_in_s"] is None


# -- the keep_alive values


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        (" 10m ", 600.0),
        ("0", 0.0),
        (0, 0.0),
        (90, 90.0),
        (2.5, 2.5),
        ("45", 45.0),
        ("-1", keep_alive.FOREVER),
        (-1, keep_alive.FOREVER),
        ("-1m", keep_alive.FOREVER),
        ("720h", 30 * 86_400.0),
    ],
)
def test_keep_alive_values(value: str | int | float, seconds: float) -> None:
    assert keep_alive.parse(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "-2",
        -5,
        "-5m",
        -0.5,
        "abc",
        "5 m",
        "5d",
        "1e3",
        "",
        "m",
        "721h",
        10**400,
        float("nan"),
        float("inf"),
        "9" * 40,
        "1h" * 20,
        True,
    ],
)
def test_hostile_keep_alive_values_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        keep_alive.parse(value)
    with pytest.raises(InvalidRequest) as refused:
        keep_alive.checked(value)
    assert refused.value.status_code == 400 and refused.value.param == "keep_alive"


def test_requests_and_settings_take_keep_alive(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, model_keep_alive="10m", worker_models=["own"])
    assert settings.keep_alive_for("m", "m@v1") == 600.0
    assert settings.keep_alive_for("own", "own@v1") == keep_alive.FOREVER
    assert Settings(home=tmp_path, model_keep_alive=None).keep_alive_for("m", "m@v1") == keep_alive.FOREVER
    with pytest.raises(ValidationError, match="keep_alive"):
        Settings(home=tmp_path, model_keep_alive="soon")
    with pytest.raises(ValidationError):
        TextGenerationParams(prompt="hi", keep_alive=True)  # not read as 1 second
    with pytest.raises(ValidationError):
        EmbeddingParams(input="hi", keep_alive={"m": 5})
    with pytest.raises(InvalidRequest, match="keep_alive"):
        TextGenerationParams(prompt="hi", keep_alive="-3").check_limits(settings)
    with pytest.raises(InvalidRequest, match="keep_alive"):
        EmbeddingParams(input="hi", keep_alive="forever").check_limits(settings)
    assert keep_alive.describe(keep_alive.FOREVER) == "forever"
    assert [keep_alive.describe(s) for s in (0, 45, 600, 5400, 90061)] == ["0s", "45s", "10m", "1h30m", "1d1h"]
