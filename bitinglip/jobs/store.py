"""Every state change of a job is one conditional UPDATE, so two gateways or two workers racing on
the same job cannot both win: a job is dispatched by one, claimed by one, finished once."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Update, func, select, update
from sqlalchemy.orm import Session

from bitinglip.db.session import Database
from bitinglip.db.tables import Job
from bitinglip.errors import NotFound

TERMINAL = ("completed", "failed", "cancelled")


def _rows(session: Session, statement: Update) -> int:
    """Run an UPDATE and say how many rows it changed (0: someone else got there first)."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobPage:
    items: list[Job]
    total: int


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- gateway side

    def create(self, *, type_: str, model: str, params: dict[str, Any], priority: int, owner: str) -> Job:
        job = Job(
            id=str(uuid.uuid4()),
            type=type_,
            model=model,
            params=params,
            priority=priority,
            owner=owner,
            status="queued",
            created_at=_now(),
        )
        with self.db.session() as s:
            s.add(job)
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None or (owner is not None and job.owner != owner):
                raise NotFound(f"job {job_id!r} not found", param="id")
            return job

    def page(self, *, owner: str | None, status: str | None, type_: str | None, limit: int, offset: int) -> JobPage:
        query = select(Job)
        if owner is not None:
            query = query.where(Job.owner == owner)
        if status is not None:
            query = query.where(Job.status == status)
        if type_ is not None:
            query = query.where(Job.type == type_)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            items = list(s.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)))
        return JobPage(items, total)

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Queued: cancelled at once (a later claim finds nothing). Running: flagged; the worker
        stops generating at the next token and records `cancelled`."""
        self.get(job_id, owner)
        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(status="cancelled", finished_at=_now(), cancel_requested=True)
            )
            s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True))
        return self.get(job_id)

    def queue_status(self) -> dict[str, dict[str, int]]:
        with self.db.session() as s:
            rows = s.execute(select(Job.status, Job.priority, func.count()).group_by(Job.status, Job.priority))
            counts: dict[str, dict[str, int]] = defaultdict(dict)
            for status, priority, count in rows:
                counts[status][str(priority)] = count
        return counts

    # -- dispatcher side

    def claim_for_dispatch(self, limit: int, redispatch_after: timedelta) -> dict[str, list[str]]:
        """Queued jobs nobody dispatched (or whose dispatch is stale), grouped by model, best first."""
        stale = _now() - redispatch_after
        with self.db.session() as s:
            rows = s.execute(
                select(Job.id, Job.model, Job.dispatched_at)
                .where(Job.status == "queued")
                .where((Job.dispatched_at.is_(None)) | (Job.dispatched_at < stale))
                .order_by(Job.priority, Job.created_at)
                .limit(limit * 4)
            ).all()
            groups: dict[str, list[str]] = defaultdict(list)
            now = _now()
            for job_id, model, dispatched_at in rows:
                if len(groups[model]) >= limit:
                    continue
                won = _rows(
                    s,
                    update(Job)
                    .where(Job.id == job_id, Job.status == "queued")
                    .where(Job.dispatched_at.is_(None) if dispatched_at is None else Job.dispatched_at == dispatched_at)
                    .values(dispatched_at=now),
                )
                if won:
                    groups[model].append(job_id)
        return dict(groups)

    def set_run(self, job_ids: list[str], run_id: str) -> None:
        with self.db.session() as s:
            s.execute(update(Job).where(Job.id.in_(job_ids)).values(prefect_run_id=run_id))

    def release_dispatch(self, job_ids: list[str]) -> None:
        with self.db.session() as s:
            s.execute(update(Job).where(Job.id.in_(job_ids), Job.status == "queued").values(dispatched_at=None))

    # -- worker side

    def claim_for_run(self, job_ids: list[str], worker_id: str) -> list[Job]:
        claimed = []
        with self.db.session() as s:
            for job_id in job_ids:
                won = _rows(
                    s,
                    update(Job)
                    .where(Job.id == job_id, Job.status == "queued")
                    .values(status="running", worker_id=worker_id, started_at=_now(), attempts=Job.attempts + 1),
                )
                if won:
                    job = s.get(Job, job_id)
                    if job is not None:
                        claimed.append(job)
        return claimed

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        with self.db.session() as s:
            return set(s.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.cancel_requested.is_(True))))

    def finish(
        self,
        job_id: str,
        *,
        status: str,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        engine_seconds: float | None = None,
    ) -> None:
        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running")
                .values(
                    status=status,
                    result=result,
                    error=error,
                    engine_seconds=engine_seconds,
                    finished_at=_now(),
                )
            )

    def requeue(self, job_id: str, error: dict[str, Any]) -> None:
        """A transient failure: back to the queue for the task's Prefect retry to claim again."""
        with self.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(status="queued", error=error))

    def fail_orphans(self, worker_ids: list[str], reason: str) -> int:
        """Jobs left `running` by workers that stopped heartbeating go back to the queue or fail."""
        if not worker_ids:
            return 0
        with self.db.session() as s:
            return _rows(
                s,
                update(Job)
                .where(Job.status == "running", Job.worker_id.in_(worker_ids))
                .values(status="queued", dispatched_at=None, error={"message": reason}),
            )
