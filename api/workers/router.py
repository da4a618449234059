from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter

from api.deps import AdminDep, SettingsDep, WorkerDirectoryDep
from api.workers.service import worker_view

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])
log = logging.getLogger(__name__)


@router.get("")
async def list_workers(workers: WorkerDirectoryDep, settings: SettingsDep, admin: AdminDep) -> dict[str, Any]:
    """Model workers from their heartbeats (stale ones are marked and get no traffic): what each holds
    loaded, its bytes against the worker's budget, keep-alive and idle time (`bitinglip ps`); and the
    Prefect work-pool workers from the Prefect API."""
    model_workers = [worker_view(w) for w in await workers.workers(fresh=True)]
    pool_workers, error = await _pool_workers(settings.prefect_api)
    return {"model_workers": model_workers, "pool_workers": pool_workers, "prefect_error": error}


async def _pool_workers(api_url: str) -> tuple[list[dict[str, Any]], str | None]:
    from prefect.client.orchestration import get_client

    found: list[dict[str, Any]] = []
    try:
        async with get_client() as client:
            for pool in await client.read_work_pools():
                for w in await client.read_workers_for_work_pool(pool.name):
                    found.append(
                        {
                            "pool": pool.name,
                            "name": w.name,
                            "status": str(getattr(w.status, "value", w.status)),
                            "last_heartbeat": w.last_heartbeat_time.isoformat() if w.last_heartbeat_time else None,
                        }
                    )
    except Exception as exc:  # Prefect being away must not break the model-worker view
        log.warning("cannot read pool workers from %s: %s", api_url, exc)
        return found, f"{type(exc).__name__}: {exc}"
    return found, None
