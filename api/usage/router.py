from __future__ import annotations

from fastapi import APIRouter, Query

from api.auth.schemas import USERNAME
from api.deps import PrincipalDep, UsageServiceDep
from api.usage.schemas import UsageHistory, UsageView

router = APIRouter(prefix="/api/v1", tags=["usage"])


@router.get("/usage", response_model=UsageView)
async def usage(
    who: PrincipalDep,
    service: UsageServiceDep,
    username: str | None = Query(default=None, max_length=64, description="Admins: another user's usage."),
) -> UsageView:
    """Today's usage against the caller's quotas (all their keys and login tokens together)."""
    return await service.usage(who, username)


@router.get("/usage/daily", response_model=UsageHistory)
async def daily_usage(
    who: PrincipalDep,
    service: UsageServiceDep,
    days: int = Query(default=7, ge=1, le=90, description="How many UTC days, today included."),
    username: str | None = Query(
        default=None,
        pattern=USERNAME,
        description="One user's rows. A user may ask only for their own (another's is 403); an admin for "
        "anyone's, and without it gets everyone's.",
    ),
) -> UsageHistory:
    """Use per user and per API key per day: a user's total (every key and sign-in), and each key's own."""
    return await service.history(who, days, username)
