from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import WorkerDirectoryDep

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


@router.get("")
async def list_workers(workers: WorkerDirectoryDep) -> dict[str, Any]:
    return {"data": [w.__dict__ for w in await workers.workers(fresh=True)]}
