"""Users' signing secrets and the record of delivery attempts, in the gateway DB."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bitinglip.config import get_settings
from bitinglip.crypto import Cipher
from bitinglip.db.session import Database
from bitinglip.db.tables import WebhookDelivery, WebhookSecret
from bitinglip.webhooks.signing import new_secret


@dataclass(frozen=True)
class Secret:
    value: str
    created_at: datetime


@dataclass(frozen=True)
class Attempt:
    event: str
    message_id: str
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookStore:
    def __init__(self, db: Database, cipher: Cipher | None = None) -> None:
        self.db = db
        self.cipher = cipher or Cipher.from_settings(get_settings())

    def _secret(self, row: WebhookSecret) -> Secret:
        return Secret(str(self.cipher.open_json(row.secret)["value"]), row.created_at)

    def secret(self, username: str) -> Secret:
        """The user's secret, made on first use; two processes making it together keep the first."""
        with self.db.session() as s:
            row = s.get(WebhookSecret, username)
            if row is not None:
                return self._secret(row)
        try:
            with self.db.session() as s:
                row = WebhookSecret(
                    username=username,
                    secret=self.cipher.seal_json({"value": new_secret()}),
                    created_at=datetime.now(UTC),
                )
                s.add(row)
        except IntegrityError:
            return self.secret(username)
        return self._secret(row)

    def rotate(self, username: str) -> Secret:
        """A new secret; deliveries signed from now on use it (the old one stops verifying at once)."""
        self.secret(username)
        sealed, now = self.cipher.seal_json({"value": new_secret()}), datetime.now(UTC)
        with self.db.session() as s:
            s.execute(
                update(WebhookSecret).where(WebhookSecret.username == username).values(secret=sealed, created_at=now)
            )
        return self.secret(username)

    def record(
        self, job_id: str, event: str, message_id: str, attempt: int, status_code: int | None, error: str | None
    ) -> None:
        with self.db.session() as s:
            s.add(
                WebhookDelivery(
                    job_id=job_id,
                    event=event,
                    message_id=message_id,
                    attempt=attempt,
                    at=datetime.now(UTC),
                    status_code=status_code,
                    error=None if error is None else error[:200],
                )
            )

    def attempts(self, job_ids: list[str]) -> dict[str, list[Attempt]]:
        """Every attempt of these jobs, oldest first, in one query (a page of jobs costs one more)."""
        if not job_ids:
            return {}
        found: dict[str, list[Attempt]] = defaultdict(list)
        with self.db.session() as s:
            rows = s.scalars(
                select(WebhookDelivery).where(WebhookDelivery.job_id.in_(job_ids)).order_by(WebhookDelivery.id)
            )
            for row in rows:
                found[row.job_id].append(
                    Attempt(row.event, row.message_id, row.attempt, row.at, row.status_code, row.error)
                )
        return dict(found)

    def reseal_all(self) -> int:
        """Every secret sealed under the newest key (key rotation); returns rows changed. A secret is
        rewritten only if it was not rotated meanwhile (its `created_at` is unchanged), never undoing one."""
        changed = 0
        with self.db.session() as s:
            rows = s.execute(select(WebhookSecret.username, WebhookSecret.secret, WebhookSecret.created_at)).all()
        for username, sealed, created_at in rows:
            if (resealed := self.cipher.reseal_json(sealed)) is not None:
                with self.db.session() as s:
                    result = s.execute(
                        update(WebhookSecret)
                        .where(WebhookSecret.username == username, WebhookSecret.created_at == created_at)
                        .values(secret=resealed)
                    )
                    changed += int(getattr(result, "rowcount", 0))
        return changed
