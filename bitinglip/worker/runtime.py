"""The worker process's live objects, reachable from Prefect task code that runs inside it.

Imports nothing heavy itself: the flow module that reads it is imported by model workers only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bitinglip.config import Settings
    from bitinglip.engines.pool import ModelPool
    from bitinglip.worker.jobs import JobRunner
    from bitinglip.worker.pump import JobPump


@dataclass
class WorkerRuntime:
    settings: Settings
    pool: ModelPool
    runner: JobRunner
    pump: JobPump


_runtime: WorkerRuntime | None = None


def set_runtime(runtime: WorkerRuntime | None) -> None:
    global _runtime
    _runtime = runtime


def current_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("inference jobs run inside `bitinglip worker`; no worker runtime in this process")
    return _runtime
