"""Sending webhook events without holding anything up: `Deliveries.send` starts an event's delivery
in the background and returns; the delivery is a Prefect task run (`deliver-webhook`, flows/
webhooks.py) whose retries, with exponential backoff, are Prefect's. Each attempt is recorded on the
job. Events of one job go out in order: a job's `completed` waits for its `start` to be delivered
(or given up), so a receiver that was down gets both, in order, when it comes back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from bitinglip.config import Settings
from bitinglip.crypto import Cipher
from bitinglip.db.session import Database
from bitinglip.db.tables import Job
from bitinglip.jobs.store import JobStore
from bitinglip.webhooks import payload, urls
from bitinglip.webhooks.signing import new_message_id, signed_headers
from bitinglip.webhooks.store import WebhookStore

log = logging.getLogger(__name__)

USER_AGENT = "BitingLip-Webhooks/1"


class DeliveryFailed(RuntimeError):
    """The receiver did not take the event (no 2xx, or no answer): worth another try."""


@dataclass(frozen=True)
class Delivery:
    """One event of one job: the same id and body on every try."""

    job_id: str
    owner: str
    event: str
    url: str
    message_id: str
    body: bytes


class WebhookSender:
    """One process's sender: signs with the owner's secret, POSTs to the checked address, records."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        cipher = Cipher.from_settings(settings)
        self.jobs = JobStore(db, cipher)
        self.store = WebhookStore(db, cipher)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # made in the loop that uses it
            self._client = httpx.AsyncClient(
                timeout=self.settings.webhook_timeout_s, follow_redirects=False, trust_env=False
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def delivery(self, job: Job, event: str) -> Delivery | None:
        """The event's body, from the job as it is now (a `start` from the claimed row as it was);
        None when the job's row does not show that outcome (a run that crashed before recording it)."""
        if event != "start":
            job = await asyncio.to_thread(self.jobs.get, job.id)
            if job.status != event:
                return None
        assert job.webhook is not None
        body = payload.body(job, event, self.settings.webhook_max_payload_bytes)
        return Delivery(job.id, job.owner, event, job.webhook["url"], new_message_id(), body)

    async def attempt(self, delivery: Delivery, attempt: int) -> int:
        """One try; returns the receiver's status code. Raises DeliveryFailed when another try is worth
        it, WebhookRefused when the URL may not be called (now: DNS may have changed since acceptance)."""
        status, error = None, None
        try:
            target = await urls.checked(delivery.url, self.settings.webhook_allow_hosts)
            secret = await asyncio.to_thread(self.store.secret, delivery.owner)
            headers = signed_headers(secret.value, delivery.message_id, datetime.now(UTC), delivery.body)
            headers |= {"content-type": "application/json", "user-agent": USER_AGENT, "host": target.host_header}
            extensions: dict[str, Any] = {"sni_hostname": target.host} if target.parts.scheme == "https" else {}
            request = self.client.build_request(
                "POST", target.pinned_url, content=delivery.body, headers=headers, extensions=extensions
            )
            # httpx's timeout bounds each phase; this bounds the attempt (a receiver trickling its headers)
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                response = await self.client.send(request, stream=True)  # the answer's body is never read
                await response.aclose()
            status = response.status_code
        except urls.WebhookRefused as exc:
            error = exc.message
            raise
        except (httpx.TimeoutException, TimeoutError) as exc:
            error = "timed out"
            raise DeliveryFailed(error) from exc
        except httpx.HTTPError as exc:
            error = "could not connect" if isinstance(exc, httpx.ConnectError) else "the connection failed"
            raise DeliveryFailed(error) from exc
        except Exception as exc:  # ours (the DB briefly away): worth another try; the detail is in our log
            log.warning("webhook attempt for job %s failed on our side", delivery.job_id, exc_info=True)
            error = "internal error"
            raise DeliveryFailed(error) from exc
        finally:
            await asyncio.to_thread(
                self.store.record, delivery.job_id, delivery.event, delivery.message_id, attempt, status, error
            )
        assert status is not None
        if not 200 <= status < 300:
            reason = "a redirect (not followed)" if 300 <= status < 400 else f"HTTP {status}"
            raise DeliveryFailed(f"the receiver answered {reason}")
        return status


Deliver = Callable[[WebhookSender, Delivery], Awaitable[object]]


class Deliveries:
    """The webhook deliveries in flight in one process. `deliver` runs one delivery to its end (the
    Prefect task with its retries); it is passed in so this module needs no Prefect."""

    def __init__(self, sender: WebhookSender, deliver: Deliver) -> None:
        self.sender = sender
        self.deliver = deliver
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[str, asyncio.Task[None]] = {}  # per job: its latest event's delivery

    def send(self, job: Job, event: str) -> None:
        """Starts delivering `event` of `job` if its webhook asks for it, and returns at once."""
        if not payload.wants(job, event):
            return
        before = self._last.get(job.id)
        task = asyncio.create_task(self._deliver(job, event, before), name=f"webhook {event} {job.id}")
        self._tasks.add(task)
        self._last[job.id] = task
        task.add_done_callback(lambda done: self._done(job.id, done))

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._last.get(job_id) is task:
            del self._last[job_id]

    async def _deliver(self, job: Job, event: str, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            with suppress(Exception):
                await asyncio.shield(before)
        try:
            if (delivery := await self.sender.delivery(job, event)) is not None:
                await self.deliver(self.sender, delivery)
        except Exception:  # given up: the attempts on the job say why; nothing else depends on it
            log.warning("webhook %s of job %s was not delivered", event, job.id, exc_info=True)

    @property
    def pending(self) -> bool:
        return bool(self._tasks)

    async def wait(self) -> None:
        """Until every delivery started so far has been delivered or given up."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Stopping: deliveries still retrying are dropped (their attempts so far stay recorded)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.sender.close()
