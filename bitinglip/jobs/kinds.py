"""Every job kind in one table: the parameters the API accepts for it, who runs it, which Prefect
deployment carries it, and how the reaper sees a dead runner.

Every other place reads this table (the job routes, the dispatcher, the workers' job pump, the reaper,
the store, the Prefect submitter in `flows/submit.py`, the job views) instead of keeping its own list
of types (docs/architecture.md §3.3)."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Literal

from bitinglip.schemas import EmbeddingParams, ImageParams, TextGenerationParams

JobType = Literal["text", "embedding", "image", "batch", "download"]
Runner = Literal["model-worker", "flow-run"]
JobParams = TextGenerationParams | EmbeddingParams | ImageParams


@dataclass(frozen=True)
class JobKind:
    type: JobType
    runner: Runner
    """model-worker: pulled by a model worker's job pump and run as its own task run there; the worker's
    heartbeat vouches for its jobs. flow-run: a flow run of `deployment`, which heartbeats on the job row."""
    params: builtins.type[JobParams] | None = None
    """The `params` shape of `POST /api/v1/tasks`; None for kinds created by their own route."""
    deployment: str | None = None
    """The Prefect deployment of a flow-run kind."""
    flow_takes_params: bool = False
    """The flow takes the job's params as its own (so the Prefect UI shows them), not just its id."""

    @property
    def prefect_run_kind(self) -> Literal["task-run", "flow-run"]:
        """Where the Prefect UI shows the job's run."""
        return "task-run" if self.runner == "model-worker" else "flow-run"


KINDS: dict[str, JobKind] = {
    kind.type: kind
    for kind in (
        JobKind("text", "model-worker", params=TextGenerationParams),
        JobKind("embedding", "model-worker", params=EmbeddingParams),
        JobKind("image", "model-worker", params=ImageParams),
        JobKind("batch", "flow-run", deployment="batch-inference/batch-inference"),
        JobKind("download", "flow-run", deployment="download-model/download-model", flow_takes_params=True),
    )
}


def job_kind(job_type: str) -> JobKind:
    try:
        return KINDS[job_type]
    except KeyError:
        raise ValueError(f"unknown job type {job_type!r}") from None


def types_run_by(runner: Runner) -> tuple[str, ...]:
    return tuple(k.type for k in KINDS.values() if k.runner == runner)
