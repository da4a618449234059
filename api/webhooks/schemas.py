"""Webhook shapes shared by the job and batch routes: what a create request may carry, and what the
job (or batch) then shows of its webhook and its delivery attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from bitinglip.webhooks.payload import Event
from bitinglip.webhooks.store import Attempt
from bitinglip.webhooks.urls import MAX_URL_LENGTH


class WebhookRequest(BaseModel):
    webhook: str | None = Field(
        default=None,
        max_length=MAX_URL_LENGTH,
        description="An http(s) URL the job's events are POSTed to, signed with your webhook secret "
        "(GET /api/v1/webhooks/secret). Private, loopback and link-local addresses are refused unless an "
        "admin allowed them.",
    )
    webhook_events_filter: list[Event] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="Which events to send: `start`, `completed`, `failed`; default all three.",
    )

    def webhook_config(self) -> tuple[str, list[str]] | None:
        """(url, events) when a webhook was asked for."""
        if self.webhook is None:
            return None
        return self.webhook, sorted(set(self.webhook_events_filter or ("start", "completed", "failed")))


class WebhookView(BaseModel):
    url: str
    events: list[str]

    @classmethod
    def of(cls, webhook: dict[str, Any] | None) -> WebhookView | None:
        return None if not webhook else cls(url=webhook["url"], events=webhook["events"])


class WebhookAttemptView(BaseModel):
    """One try to deliver one event; `webhook_id` is the `webhook-id` header, the same on every retry."""

    event: str
    webhook_id: str
    attempt: int
    at: datetime
    status_code: int | None = Field(description="The receiver's answer; null when none came (see `error`).")
    error: str | None
    delivered: bool

    @classmethod
    def of(cls, attempt: Attempt) -> WebhookAttemptView:
        return cls(
            event=attempt.event,
            webhook_id=attempt.message_id,
            attempt=attempt.attempt,
            at=attempt.at,
            status_code=attempt.status_code,
            error=attempt.error,
            delivered=attempt.delivered,
        )


def attempt_views(attempts: list[Attempt] | None) -> list[WebhookAttemptView]:
    return [WebhookAttemptView.of(a) for a in attempts or []]


class WebhookSecretView(BaseModel):
    secret: str = Field(description="Standard Webhooks secret (`whsec_` + base64): verifies `webhook-signature`.")
    created_at: datetime
