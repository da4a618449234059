"""A job carried by a Prefect flow run (batches, downloads): claimed by the run, kept alive by a
heartbeat on its row while it works, finished by that run only.

A run whose process dies stops beating; the gateway's reaper re-queues the job and the dispatcher
starts a new run, which resumes (docs/architecture.md §2.4: nothing stays `running` forever, nothing runs twice)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from bitinglip.db.tables import Job
from bitinglip.errors import error_record
from bitinglip.jobs.store import JobStore

log = logging.getLogger(__name__)


class FlowJob:
    """The lifecycle every flow-run kind shares:

    with FlowJob(store, job_id, flow_run_id, beat_every_s) as job:
        if job.claim(max_attempts) is None:
            return {"skipped": job.skipped}
        with job.failing():
            result = work()
        job.finish("completed", result=result)
    """

    def __init__(self, store: JobStore, job_id: str, flow_run_id: str, beat_every_s: float) -> None:
        self.store = store
        self.job_id = job_id
        self.claimant = f"flow-run:{flow_run_id}"
        self.skipped = ""  # why `claim` returned None
        self.beat_every_s = beat_every_s
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()  # another run holds the job now: write nothing more
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self, max_attempts: int) -> Job | None:
        """Queued -> running for this run. None when the job is not queued (cancelled, taken by another
        run), or when it has been started more than `max_attempts` times: a job whose runs keep dying
        then fails instead of being resumed forever."""
        claimed = self.store.claim_for_run([self.job_id], self.claimant)
        if not claimed:
            self.skipped = f"job {self.job_id} is no longer queued"
            return None
        if claimed[0].attempts > max_attempts:
            self.skipped = f"gave up after {claimed[0].attempts - 1} attempts"
            self.finish("failed", error={"message": self.skipped, "type": "job_error"}, progress={"phase": "failed"})
            return None
        self._thread = threading.Thread(target=self._beat, name=f"job-heartbeat-{self.job_id}", daemon=True)
        self._thread.start()
        return claimed[0]

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_every_s):
            self._record(None)

    def _record(self, progress: dict[str, Any] | None) -> None:
        try:
            mine, cancel = self.store.beat(self.job_id, self.claimant, progress)
        except Exception as exc:  # the DB may be briefly away; the next beat tries again
            log.warning("heartbeat of job %s failed: %s", self.job_id, exc)
            return
        if cancel:
            self.cancel_requested.set()
        if not mine:
            self.lost.set()

    def progress(self, progress: dict[str, Any]) -> None:
        self._record(progress)

    def finish(self, status: str, **fields: Any) -> None:
        self.store.finish_many([(self.job_id, {"status": status, **fields})], self.claimant)

    @contextmanager
    def failing(self) -> Iterator[None]:
        """An exception inside fails the job with a client-safe record (the detail stays in the log),
        then propagates so Prefect marks the run failed too."""
        try:
            yield
        except Exception as exc:
            self.finish("failed", error=error_record(exc), progress={"phase": "failed"})
            raise

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FlowJob:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
