from __future__ import annotations

from fastapi import APIRouter, Query, Response

from api.batches.schemas import BatchCreateRequest, BatchList, BatchObject
from api.deps import BatchServiceDep, IdempotencyKeyDep, PrincipalDep, ScopeDep, replayed

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", response_model=BatchObject)
async def create_batch(
    body: BatchCreateRequest, batches: BatchServiceDep, who: PrincipalDep, response: Response, key: IdempotencyKeyDep
) -> BatchObject:
    batch, replay = await batches.create(body, who, key)
    replayed(response, replay)
    return batch


@router.get("", response_model=BatchList)
async def list_batches(
    batches: BatchServiceDep,
    scope: ScopeDep,
    limit: int = Query(default=20, ge=1, le=100),
    after: str | None = Query(default=None, max_length=36),
) -> BatchList:
    return await batches.list(scope, limit, after)


@router.get("/{batch_id}", response_model=BatchObject)
async def get_batch(batch_id: str, batches: BatchServiceDep, scope: ScopeDep) -> BatchObject:
    return await batches.get(batch_id, scope)


@router.post("/{batch_id}/cancel", response_model=BatchObject)
async def cancel_batch(batch_id: str, batches: BatchServiceDep, scope: ScopeDep) -> BatchObject:
    return await batches.cancel(batch_id, scope)
