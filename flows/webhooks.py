"""Webhook deliveries as Prefect task runs (`deliver-webhook`), in the flow run of the process where a
job's state changed: a model worker's `inference-jobs` run, a batch's `batch-inference` run. Prefect
retries a failed attempt with exponential backoff and jitter (BITINGLIP_WEBHOOK_ATTEMPTS,
BITINGLIP_WEBHOOK_BACKOFF_S); a refused URL is not retried. Only the event and job id show in Prefect:
the body and the secret stay in this process."""

from __future__ import annotations

from functools import cache
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.states import State
from prefect.tasks import exponential_backoff

from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.webhooks.delivery import Deliveries, Delivery, DeliveryFailed, WebhookSender

MAX_DELAYS = 50  # Prefect takes at most this many retry delays


def _run_name(parameters: dict[str, Any]) -> str:
    delivery: Delivery = parameters["delivery"]
    return f"{delivery.event} webhook · job {delivery.job_id}"


async def _worth_retrying(task: object, task_run: object, state: State[Any]) -> bool:
    """A receiver that did not take the event is tried again; a refused URL is not. Async: in an async
    task's engine, `state.result()` hands back a coroutine instead of raising."""
    return isinstance(await state.aresult(raise_on_failure=False), DeliveryFailed)


@task(
    name="deliver-webhook",
    task_run_name=_run_name,  # type: ignore[arg-type]
    retry_condition_fn=_worth_retrying,
    persist_result=False,
    cache_policy=NO_CACHE,  # every event is delivered, never answered from a cache
)
async def deliver_webhook(sender: WebhookSender, delivery: Delivery) -> int:
    """One attempt per task-run try; the receiver's status code when it took the event."""
    return await sender.attempt(delivery, task_run.run_count)


@cache
def _configured(attempts: int, backoff_s: float) -> Any:
    retries = min(attempts - 1, MAX_DELAYS)
    delays = exponential_backoff(backoff_factor=backoff_s)(retries) if retries else 0
    return deliver_webhook.with_options(retries=retries, retry_delay_seconds=delays, retry_jitter_factor=0.2)


async def _deliver(sender: WebhookSender, delivery: Delivery) -> None:
    settings = sender.settings
    await _configured(settings.webhook_attempts, settings.webhook_backoff_s)(sender, delivery)


def deliveries(settings: Settings, db: Database) -> Deliveries:
    """The process's deliveries, each a `deliver-webhook` task run of the flow run it starts in."""
    return Deliveries(WebhookSender(settings, db), _deliver)
