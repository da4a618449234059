"""Which loaded models to unload so that one more fits a worker's memory budget and model count.

A pure plan, decided in full before anything is unloaded: a load that cannot fit unloads nothing.
Least recently used go first; pinned models (the registry's pin) and busy ones (requests waiting or
running) are never chosen, so making room never fails a request that is already in the pool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bitinglip.errors import NoRoomToLoad


@dataclass(frozen=True)
class Resident:
    """What the plan reads of one loaded model."""

    id: str
    bytes: int
    pinned: bool = False
    busy: bool = False

    @property
    def held(self) -> bool:
        return self.pinned or self.busy


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 10_000_000 else f"{n / 1e6:,.0f} MB"


def plan_room(resident: Sequence[Resident], model_id: str, need: int, budget: int | None, max_loaded: int) -> list[str]:
    """Ids to unload, least recently used first (`resident` is in that order), so that `model_id`,
    needing `need` bytes, fits within `budget` bytes (None: no byte limit) and `max_loaded` models.
    Raises NoRoomToLoad (503) saying what holds the memory when no choice of idle models is enough."""
    used, count = sum(r.bytes for r in resident), len(resident)

    def fits() -> bool:
        return count < max_loaded and (budget is None or used + need <= budget)

    victims: list[str] = []
    for r in resident:
        if fits():
            break
        if not r.held:
            victims.append(r.id)
            used, count = used - r.bytes, count - 1
    if fits():
        return victims
    held = [r for r in resident if r.held]
    held_bytes = sum(r.bytes for r in held)
    retry = 5.0 if any(r.busy for r in held) else None  # busy models go idle; pinned ones stay
    if count >= max_loaded:
        raise NoRoomToLoad(
            f"loading {model_id} needs a free slot; this worker holds at most {max_loaded} models and "
            f"{len(held)} pinned/busy models hold {megabytes(held_bytes)}",
            param="model",
            retry_after=retry,
        )
    assert budget is not None  # only a byte budget is left to refuse
    alone = " (more than the whole budget)" if need > budget else ""
    raise NoRoomToLoad(
        f"loading {model_id} needs {megabytes(need)}{alone}; worker budget {megabytes(budget)}, "
        f"pinned/busy models hold {megabytes(held_bytes)}",
        param="model",
        retry_after=retry,
    )
