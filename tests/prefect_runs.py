"""Reading Prefect's record of the platform's runs in tests: flow runs by tag or id, and their artifacts.
Prefect records some of it from events, a little after the fact, so each read retries for a while."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from tests.platform_harness import Platform

T = TypeVar("T")


def _until(read: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if done(found):
            return found
        assert time.monotonic() < deadline, f"{what} after {timeout} s: {found}"
        time.sleep(0.3)


def flow_runs_tagged(platform: Platform, *tags: str, count: int = 1) -> list[Any]:
    """The flow runs carrying every one of `tags` (at least `count` of them, and in a final state)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from bitinglip.prefect_client import prefect_client_settings

    def read() -> list[Any]:
        with prefect_client_settings(platform.settings), get_client(sync_client=True) as client:
            return list(client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=list(tags)))))

    return _until(
        read, lambda runs: len(runs) >= count and all(r.state and r.state.is_final() for r in runs), f"runs {tags}"
    )


def flow_run(platform: Platform, run_id: str) -> Any:
    """One flow run, once it is in a final state."""
    from prefect import get_client

    from bitinglip.prefect_client import prefect_client_settings

    def read() -> Any:
        with prefect_client_settings(platform.settings), get_client(sync_client=True) as client:
            return client.read_flow_run(uuid.UUID(run_id))

    return _until(read, lambda run: bool(run.state and run.state.is_final()), f"flow run {run_id} not final")


def artifacts_of(platform: Platform, run_id: str, kinds: tuple[str, ...]) -> dict[str, Any]:
    """The latest artifact of each kind (progress, table, ...) on a flow run, its data decoded."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from bitinglip.prefect_client import prefect_client_settings

    def read() -> dict[str, Any]:
        with prefect_client_settings(platform.settings), get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)]))
            )
        return {str(a.type): a for a in found}

    return _until(read, lambda found: set(kinds) <= set(found), f"artifacts {kinds} of {run_id}")


def table_rows(artifact: Any) -> list[dict[str, Any]]:
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return list(data)
