from __future__ import annotations

import asyncio

from fastapi import APIRouter

from api.deps import OwnerDep, StateDep
from api.webhooks.schemas import WebhookSecretView

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


@router.get("/secret", response_model=WebhookSecretView)
async def get_secret(owner: OwnerDep, state: StateDep) -> WebhookSecretView:
    """Your webhook signing secret (made on first use): verify each delivery's `webhook-signature` with it."""
    secret = await asyncio.to_thread(state.webhooks.secret, owner)
    return WebhookSecretView(secret=secret.value, created_at=secret.created_at)


@router.post("/secret/rotate", response_model=WebhookSecretView)
async def rotate_secret(owner: OwnerDep, state: StateDep) -> WebhookSecretView:
    """A new secret; deliveries from now on are signed with it, and the old one stops verifying."""
    secret = await asyncio.to_thread(state.webhooks.rotate, owner)
    return WebhookSecretView(secret=secret.value, created_at=secret.created_at)
