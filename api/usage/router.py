from __future__ import annotations

from fastapi import APIRouter, Query

from api.deps import PrincipalDep, UsageServiceDep
from api.usage.schemas import UsageView

router = APIRouter(prefix="/api/v1", tags=["usage"])


@router.get("/usage", response_model=UsageView)
async def usage(
    who: PrincipalDep,
    service: UsageServiceDep,
    username: str | None = Query(default=None, max_length=64, description="Admins: another user's usage."),
) -> UsageView:
    """Today's usage against the caller's quotas (all their keys and login tokens together)."""
    return await service.usage(who, username)
