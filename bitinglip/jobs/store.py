"""Every state change of a job is one conditional UPDATE, so two gateways or two workers racing on
the same job cannot both win: a job is dispatched by one, claimed by one, finished once.

The payload columns (`params`, `result`) are sealed here when encryption keys are configured
(bitinglip/crypto.py) and opened on every read, so the DB holds ciphertext and callers see plaintext."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Delete, Table, Update, delete, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from bitinglip.auth import usage
from bitinglip.auth.usage import HoldRequest, UsageLedger
from bitinglip.config import get_settings
from bitinglip.crypto import Cipher
from bitinglip.db.paging import after_cursor
from bitinglip.db.session import Database
from bitinglip.db.tables import Job, WebhookDelivery
from bitinglip.errors import BitingLipError, Conflict, NotFound
from bitinglip.jobs.kinds import job_kind, types_run_by

TERMINAL = ("completed", "failed", "cancelled")


def _rows(session: Session, statement: Update | Delete) -> int:
    """Run an UPDATE and say how many rows it changed (0: someone else got there first)."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount)


_INSERT_JOB = insert(cast(Table, Job.__table__))


def _counters_of(new: NewJob) -> tuple[str, ...]:
    return tuple(subject for subject, _ in new.hold.caps) if new.hold is not None else ()


def _now() -> datetime:
    return datetime.now(UTC)


def _claimable(warm: list[str], cold_after: timedelta) -> ColumnElement[bool]:
    """What a model worker may claim: queued model-worker jobs of its warm models, or of any model
    once they waited `cold_after` (one definition for the claim and the idle poll's look)."""
    return (
        (Job.status == "queued")
        & Job.type.in_(types_run_by("model-worker"))
        & (Job.model.in_(warm) | (Job.created_at < _now() - cold_after))
    )


@dataclass(frozen=True)
class Dispatched:
    """A job taken for dispatch: what its Prefect run is made from."""

    id: str
    type: str
    model: str
    owner: str
    params: dict[str, Any]


@dataclass(frozen=True)
class JobPage:
    items: list[Job]
    total: int


@dataclass(frozen=True)
class NewJob:
    """A job to accept; `within(session, job_id)` runs in the transaction that inserts it, after its
    `hold` was granted."""

    type_: str
    model: str
    params: dict[str, Any]
    priority: int
    owner: str
    request_id: str | None = None
    within: Callable[[Session, str], object] | None = None
    webhook: dict[str, Any] | None = None  # {"url", "events"}, sealed like params
    hold: HoldRequest | None = None  # the quota it may use, held in the INSERT's transaction (`job:ID`)


class JobStore:
    def __init__(self, db: Database, cipher: Cipher | None = None) -> None:
        """`cipher` defaults to the keys in this process's settings (every process reads the same)."""
        self.db = db
        self.cipher = cipher or Cipher.from_settings(get_settings())
        self.ledger = UsageLedger(db)

    def _open(self, job: Job) -> Job:
        """Plaintext payload on the (detached) row, without marking it changed."""
        set_committed_value(job, "params", self.cipher.open_json(job.params))
        set_committed_value(job, "result", self.cipher.open_json(job.result))
        set_committed_value(job, "webhook", self.cipher.open_json(job.webhook))
        return job

    def _opened(self, jobs: list[Job]) -> list[Job]:
        return [self._open(job) for job in jobs]

    # -- gateway side

    def create(
        self,
        *,
        type_: str,
        model: str,
        params: dict[str, Any],
        priority: int,
        owner: str,
        request_id: str | None = None,
        webhook: dict[str, Any] | None = None,
        within: Callable[[Session, str], object] | None = None,
    ) -> Job:
        """`within(session, job_id)` runs in the INSERT's transaction (the job's quota hold, its
        idempotency key): the hold commits with the row or not at all. `webhook` ({"url", "events"}) is
        sealed like `params`."""
        return self.add(NewJob(type_, model, params, priority, owner, request_id, within, webhook))

    def add(self, new: NewJob) -> Job:
        """One job in a transaction of its own."""
        (made,) = self.create_many([new])
        if isinstance(made, BitingLipError):
            raise made
        return made

    def create_many(self, jobs: list[NewJob]) -> list[Job | BitingLipError]:
        """Each job with its quota hold and its `within` in one transaction and one commit for all; a
        job whose hold is refused, or whose `within` refuses it (a BitingLipError, which leaves the
        transaction as it found it; the job's granted hold is given back), is answered with that error
        and the others are written. Any other failure fails them all."""
        made: dict[int, dict[str, Any] | BitingLipError] = {}
        # by owner, then the counters each hold names (user before key): the quota counters are locked in
        # one order by every group and every settlement, so two transactions never wait on each other in a circle
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i].owner, _counters_of(jobs[i])))
        rows = {i: self._row(jobs[i]) for i in order}
        with self.db.session() as s:
            holding = [i for i in order if jobs[i].hold is not None]
            requests = [(usage.job_hold_id(rows[i]["id"]), cast(HoldRequest, jobs[i].hold)) for i in holding]
            refused = {
                i: outcome
                for i, outcome in zip(holding, self.ledger.reserve_all(s, requests), strict=True)
                if isinstance(outcome, BitingLipError)
            }
            for i in order:
                new, row = jobs[i], rows[i]
                if i in refused:
                    made[i] = refused[i]
                    continue
                try:
                    if new.within is not None:
                        new.within(s, row["id"])
                except BitingLipError as refusal:
                    if new.hold is not None:  # its granted hold goes back with it
                        self.ledger.release_in(s, usage.job_hold_id(row["id"]))
                    made[i] = refusal
                    continue
                made[i] = row
            written = [row for row in made.values() if isinstance(row, dict)]
            if written:  # one batched INSERT for the group, as rows: no unit of work to track them
                s.execute(_INSERT_JOB, written)
        return [self._accepted(made[i], jobs[i]) for i in range(len(jobs))]

    def _row(self, new: NewJob) -> dict[str, Any]:
        """A new job's row with every column the answer shows, so the returned object carries them too."""
        return {
            "id": str(uuid.uuid4()),
            "request_id": new.request_id,
            "type": new.type_,
            "model": new.model,
            "params": self.cipher.seal_json(new.params),
            "priority": new.priority,
            "owner": new.owner,
            "status": "queued",
            "attempts": 0,
            "cancel_requested": False,
            "created_at": _now(),
            "webhook": self.cipher.seal_json(new.webhook),
        }

    @staticmethod
    def _accepted(made: dict[str, Any] | BitingLipError, new: NewJob) -> Job | BitingLipError:
        """The written job as an object outside any session, with its plaintext payload (the answer's view)."""
        if isinstance(made, BitingLipError):
            return made
        return Job(**{**made, "params": new.params, "webhook": new.webhook})

    def get(self, job_id: str, owner: str | None = None) -> Job:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None or (owner is not None and job.owner != owner):
                raise NotFound(f"job {job_id!r} not found", param="id")
        return self._open(job)

    def many(self, job_ids: list[str]) -> list[Job]:
        with self.db.session() as s:
            jobs = list(s.scalars(select(Job).where(Job.id.in_(job_ids))))
        return self._opened(jobs)

    def page(
        self,
        *,
        owner: str | None,
        status: str | None,
        type_: str | None,
        limit: int,
        offset: int = 0,
        after: str | None = None,
    ) -> JobPage:
        """Newest first; `after` (a job id) continues a cursor-paged listing (OpenAI list style)."""
        query = select(Job)
        if after is not None:
            cursor = self.get(after, owner)
            query = query.where(after_cursor(Job.created_at, Job.id, cursor.created_at, cursor.id))
        if owner is not None:
            query = query.where(Job.owner == owner)
        if status is not None:
            query = query.where(Job.status == status)
        if type_ is not None:
            query = query.where(Job.type == type_)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            items = list(s.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)))
        return JobPage(self._opened(items), total)

    def active(self, type_: str, model: str) -> Job | None:
        """A queued or running job of this type and model, if any (downloads share one)."""
        with self.db.session() as s:
            job = s.scalars(
                select(Job).where(Job.type == type_, Job.model == model, Job.status.in_(("queued", "running")))
            ).first()
        return None if job is None else self._open(job)

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

    def claim_for_dispatch(self, limit: int, redispatch_after: timedelta) -> list[Dispatched]:
        """Queued flow-run jobs nobody dispatched (or whose dispatch went stale), best priority first,
        taken in one atomic UPDATE ... RETURNING with what a submitter needs (the owner for the run's
        tags, params for flows that take them, empty for the others)."""
        dispatchable = (
            (Job.status == "queued")
            & Job.type.in_(types_run_by("flow-run"))
            & (Job.dispatched_at.is_(None) | (Job.dispatched_at < _now() - redispatch_after))
        )
        candidates = select(Job.id).where(dispatchable).order_by(Job.priority, Job.created_at).limit(limit)
        with self.db.session() as s:
            rows = s.execute(
                update(Job)
                .where(Job.id.in_(candidates.scalar_subquery()), dispatchable)
                .values(dispatched_at=_now())
                .returning(Job.id, Job.type, Job.model, Job.owner, Job.params, Job.priority, Job.created_at)
            ).all()
        # only a flow that shows its params gets them: prompts are not opened just to be dispatched
        return [
            Dispatched(job_id, type_, model, owner, self.cipher.open_json(params) if shown else {})
            for job_id, type_, model, owner, params, _, _ in sorted(rows, key=lambda r: (r[5], r[6]))
            for shown in [job_kind(type_).flow_takes_params]
        ]

    def set_run(self, job_ids: list[str], run_id: str) -> None:
        with self.db.session() as s:
            s.execute(update(Job).where(Job.id.in_(job_ids)).values(prefect_run_id=run_id))

    def release_dispatch(self, job_ids: list[str]) -> None:
        with self.db.session() as s:
            s.execute(update(Job).where(Job.id.in_(job_ids), Job.status == "queued").values(dispatched_at=None))

    # -- worker side

    def claim_next(self, worker_id: str, warm: list[str], cold_after: timedelta, limit: int) -> list[Job]:
        """Queued model-worker jobs, best priority then oldest, taken queued -> running in one UPDATE:
        those of models warm here at once, the others once they waited `cold_after` (then this worker
        loads the model). Workers racing for a row cannot both win: the UPDATE re-checks `queued`."""
        claimable = _claimable(warm, cold_after)
        candidates = (
            select(Job.id)
            .where(claimable)
            .order_by(Job.priority, Job.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL: replicas take different rows (SQLite: no-op)
        )
        now = _now()
        with self.db.session() as s:
            # two statements, not UPDATE ... IN (subquery): PostgreSQL may re-run a LIMIT subquery per row
            ids = list(s.scalars(candidates))
            if not ids:
                return []
            claimed = list(
                s.scalars(
                    update(Job)
                    .where(Job.id.in_(ids), claimable)
                    .values(
                        status="running",
                        worker_id=worker_id,
                        started_at=now,
                        heartbeat_at=now,
                        attempts=Job.attempts + 1,
                    )
                    .returning(Job)
                )
            )
        return self._opened(sorted(claimed, key=lambda j: (j.priority, j.created_at)))

    def has_claimable(self, warm: list[str], cold_after: timedelta) -> bool:
        """One cheap indexed look, for an idle worker's poll."""
        claimable = _claimable(warm, cold_after)
        with self.db.session() as s:
            return s.scalar(select(Job.id).where(claimable).limit(1)) is not None

    def claim_for_run(self, job_ids: list[str], worker_id: str) -> list[Job]:
        """Queued -> running in one statement; a job someone else claimed (or cancelled) is skipped."""
        with self.db.session() as s:
            claimed = list(
                s.scalars(
                    update(Job)
                    .where(Job.id.in_(job_ids), Job.status == "queued")
                    .values(
                        status="running",
                        worker_id=worker_id,
                        started_at=_now(),
                        heartbeat_at=_now(),
                        attempts=Job.attempts + 1,
                    )
                    .returning(Job)
                )
            )
        return self._opened(claimed)

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        with self.db.session() as s:
            return set(s.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.cancel_requested.is_(True))))

    def finish_many(self, outcomes: list[tuple[str, dict[str, Any]]], worker_id: str) -> None:
        """Record final outcomes (status, result, error, engine_seconds) in one transaction. Only the
        worker holding the claim can finish a job: one whose job was taken back can write nothing."""
        now = _now()
        with self.db.session() as s:
            for job_id, fields in outcomes:
                if "result" in fields:
                    fields = {**fields, "result": self.cipher.seal_json(fields["result"])}
                s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == "running", Job.worker_id == worker_id)
                    .values(finished_at=now, **fields)
                )

    def release(self, job_ids: list[str], worker_id: str) -> None:
        """Hand claimed jobs back to the queue untouched (their runs could not start, or the worker is
        stopping), in one statement."""
        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id.in_(job_ids), Job.status == "running", Job.worker_id == worker_id)
                .values(status="queued", attempts=Job.attempts - 1)
            )

    # -- flow-run side (batches, downloads): the run beats on its job row while it works

    def beat(self, job_id: str, claimant: str, progress: dict[str, Any] | None = None) -> tuple[bool, bool]:
        """Refresh the claim (and progress); returns (still ours, cancel requested)."""
        values: dict[str, Any] = {"heartbeat_at": _now()}
        if progress is not None:
            values["progress"] = progress
        with self.db.session() as s:
            mine = _rows(
                s,
                update(Job)
                .where(Job.id == job_id, Job.status == "running", Job.worker_id == claimant)
                .values(**values),
            )
            cancel = s.scalar(select(Job.cancel_requested).where(Job.id == job_id))
        return mine > 0, bool(cancel)

    def requeue_silent(self, types: tuple[str, ...], older_than: timedelta) -> int:
        """Flow-run jobs whose run stopped beating (its process was killed, its node lost) go back to
        the queue; the next run resumes them, and cached chunks make that cheap."""
        cutoff = _now() - older_than
        with self.db.session() as s:
            return _rows(
                s,
                update(Job)
                .where(Job.status == "running", Job.type.in_(types))
                .where(func.coalesce(Job.heartbeat_at, Job.started_at) < cutoff)
                .values(
                    status="queued",
                    dispatched_at=None,
                    worker_id=None,
                    error={"message": "its flow run stopped while running it; resumed", "type": "worker_lost"},
                ),
            )

    def requeue_orphans(self, live_workers: list[str], types: tuple[str, ...], older_than: timedelta) -> int:
        """Jobs `running` on a worker that is gone (no fresh heartbeat) go back to the queue, to be
        dispatched again; their attempt count bounds how often that can happen."""
        with self.db.session() as s:
            return _rows(
                s,
                update(Job)
                .where(Job.status == "running", Job.type.in_(types), Job.started_at < _now() - older_than)
                .where(Job.worker_id.is_(None) | Job.worker_id.not_in(live_workers))
                .values(
                    status="queued",
                    dispatched_at=None,
                    worker_id=None,
                    error={"message": "its model worker stopped while running it; retried", "type": "worker_lost"},
                ),
            )

    def requeue_worker(self, worker_id: str) -> int:
        """The inference jobs `running` on a model worker known to be gone (its process is dead, or
        it is starting again under the same id) go back to the queue; returns how many. Nothing it
        ran can still finish, so unlike `requeue_orphans` this waits for no heartbeat to go stale."""
        with self.db.session() as s:
            return _rows(
                s,
                update(Job)
                .where(Job.status == "running", Job.type.in_(types_run_by("model-worker")), Job.worker_id == worker_id)
                .values(
                    status="queued",
                    dispatched_at=None,
                    worker_id=None,
                    error={"message": "its model worker stopped while running it; retried", "type": "worker_lost"},
                ),
            )

    # -- lifecycle: deletion by the owner, retention, key rotation

    def settled(self, job_id: str, owner: str | None = None) -> Job:
        """The job, finished, before its owner deletes it: a queued one is cancelled on the way; a
        running one is a conflict (it may still write its result)."""
        job = self.get(job_id, owner)
        if job.status == "queued":
            job = self.cancel(job_id, owner)
        if job.status not in TERMINAL:
            raise Conflict(f"job {job_id!r} is running; cancel it and delete it once it has stopped", param="id")
        return job

    def expired(self, *, batches: bool, before: datetime, limit: int = 500) -> list[Job]:
        """Finished jobs (batches, or every other type) that ended before `before`, oldest first.
        Payloads stay sealed: purging needs ids, owners and types only, never a key."""
        kind = (Job.type == "batch") if batches else (Job.type != "batch")
        ended = func.coalesce(Job.finished_at, Job.created_at)
        query = select(Job).where(kind, Job.status.in_(TERMINAL), ended < before).order_by(ended).limit(limit)
        with self.db.session() as s:
            return list(s.scalars(query))

    def delete_many(self, job_ids: list[str]) -> int:
        """Delete these rows if they are still finished (a re-queued job is not purged), and the
        webhook attempts of those deleted."""
        if not job_ids:
            return 0
        with self.db.session() as s:
            deleted = _rows(s, delete(Job).where(Job.id.in_(job_ids), Job.status.in_(TERMINAL)))
            s.execute(
                delete(WebhookDelivery).where(
                    WebhookDelivery.job_id.in_(job_ids), WebhookDelivery.job_id.not_in(select(Job.id))
                )
            )
            return deleted

    def active_batch_inputs(self) -> set[str]:
        """Input file ids of batches not finished yet: their inputs must outlive any retention."""
        with self.db.session() as s:
            jobs = list(s.scalars(select(Job).where(Job.type == "batch", Job.status.not_in(TERMINAL))))
        return {str(job.params.get("input_file_id")) for job in self._opened(jobs)}

    def reseal_all(self, page: int = 200) -> int:
        """Rewrite every sealed (or still plaintext) payload under the newest key; returns rows changed.
        `params` and `webhook` never change after creation and `result` only until a job finishes, so
        only settled values are rewritten and no concurrent write can be lost."""
        changed, last = 0, ""
        while True:
            with self.db.session() as s:
                rows = s.execute(
                    select(Job.id, Job.status, Job.params, Job.result, Job.webhook)
                    .where(Job.id > last)
                    .order_by(Job.id)
                    .limit(page)
                ).all()
            if not rows:
                return changed
            for job_id, status, params, result, webhook in rows:
                values: dict[str, Any] = {}
                if (sealed := self.cipher.reseal_json(params)) is not None:
                    values["params"] = sealed
                if (sealed := self.cipher.reseal_json(webhook)) is not None:
                    values["webhook"] = sealed
                if status in TERMINAL and (sealed := self.cipher.reseal_json(result)) is not None:
                    values["result"] = sealed
                if values:
                    with self.db.session() as s:
                        changed += _rows(s, update(Job).where(Job.id == job_id).values(**values))
            last = rows[-1][0]
