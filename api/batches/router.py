from __future__ import annotations

from fastapi import APIRouter, Query

from api.batches.schemas import BatchCreateRequest, BatchList, BatchObject
from api.deps import BatchServiceDep, OwnerDep

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", response_model=BatchObject)
async def create_batch(body: BatchCreateRequest, batches: BatchServiceDep, owner: OwnerDep) -> BatchObject:
    return await batches.create(body, owner)


@router.get("", response_model=BatchList)
async def list_batches(
    batches: BatchServiceDep,
    owner: OwnerDep,
    limit: int = Query(default=20, ge=1, le=100),
    after: str | None = Query(default=None, max_length=36),
) -> BatchList:
    return await batches.list(owner, limit, after)


@router.get("/{batch_id}", response_model=BatchObject)
async def get_batch(batch_id: str, batches: BatchServiceDep, owner: OwnerDep) -> BatchObject:
    return await batches.get(batch_id, owner)


@router.post("/{batch_id}/cancel", response_model=BatchObject)
async def cancel_batch(batch_id: str, batches: BatchServiceDep, owner: OwnerDep) -> BatchObject:
    return await batches.cancel(batch_id, owner)
