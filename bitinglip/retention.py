"""What expires, and how it is removed: finished jobs with their stored outputs, stored results
without a job (sync image URLs), uploaded files, finished batches with their output and error files
and the chunk outputs they cached. One kind per function, each with its own retention setting, so
the purge flow (flows/retention.py) runs one task per kind and a failing kind never blocks another.

Stored bytes go before the rows that point at them: a purge interrupted half-way leaves rows to find
again on the next run, never bytes nobody can find. The same removal serves an owner deleting a job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bitinglip.batches.files import FileStore
from bitinglip.db.tables import Job
from bitinglip.jobs.store import JobStore
from bitinglip.results import ResultStore

CHUNKS = "batches/chunks/"  # content-addressed chunk outputs, shared by every batch that caches them
CHUNK_CACHE = "prefect/batch-chunk-{key}"  # Prefect's cache record of a chunk, beside the results


@dataclass
class Removed:
    rows: int = 0  # job rows, or file records for the files kind
    objects: int = 0  # stored objects (local files or S3 keys)
    files: int = 0  # file records removed with a job (a batch's output and error files)

    def __iadd__(self, other: Removed) -> Removed:
        self.rows += other.rows
        self.objects += other.objects
        self.files += other.files
        return self


def cutoff(days: float | None, now: datetime) -> datetime | None:
    """The oldest time kept; None keeps forever."""
    return None if days is None else now - timedelta(days=days)


def output_prefix(job: Job) -> str:
    """Where a job's stored outputs live (bitinglip/worker/jobs.py, flows/batch.py write them there)."""
    return f"batches/{job.id}/" if job.type == "batch" else f"jobs/{job.owner}/{job.id}/"


def remove_outputs(job: Job, results: ResultStore, files: FileStore) -> Removed:
    """A finished job's stored outputs, and for a batch the file records of its output and error files."""
    prefix = output_prefix(job)
    records = files.under(prefix) if job.type == "batch" else []
    objects = results.delete_prefix(prefix)
    return Removed(objects=objects, files=files.delete_many([r.id for r in records]))


def delete_job(job: Job, jobs: JobStore, results: ResultStore, files: FileStore) -> Removed:
    removed = remove_outputs(job, results, files)
    removed.rows = jobs.delete_many([job.id])
    return removed


def purge_jobs(jobs: JobStore, results: ResultStore, files: FileStore, before: datetime) -> Removed:
    """Finished async jobs (text, embedding, image, download) that ended before `before`."""
    return _purge_finished(jobs, results, files, before, batches=False)


def purge_batches(jobs: JobStore, results: ResultStore, files: FileStore, before: datetime) -> Removed:
    """Finished batches that ended before `before`, with their output and error files; then the chunk
    outputs older than that. A chunk's cache record goes first, so a batch started meanwhile computes
    the chunk again instead of finding a record that points at nothing."""
    removed = _purge_finished(jobs, results, files, before, batches=True)
    for chunk in [obj for obj in results.objects(CHUNKS) if obj.modified < before]:
        name = chunk.key.removeprefix(CHUNKS).removesuffix(".jsonl")
        results.delete(CHUNK_CACHE.format(key=name))
        removed.objects += results.delete(chunk.key)
    return removed


def purge_results(results: ResultStore, before: datetime) -> Removed:
    """Stored results without a job row (images a sync request returned as URLs), by age."""
    old = [obj.key for obj in results.objects("images/") if obj.modified < before]
    return Removed(objects=results.delete_objects(old))


def purge_files(jobs: JobStore, results: ResultStore, files: FileStore, before: datetime) -> Removed:
    """Uploaded files created before `before`, except inputs of batches that have not finished."""
    removed = Removed()
    keep = jobs.active_batch_inputs()
    while records := files.expired("batch", before, keep):
        for record in records:
            removed.objects += results.delete(record.key)
        removed.rows += files.delete_many([r.id for r in records])
    return removed


def _purge_finished(
    jobs: JobStore, results: ResultStore, files: FileStore, before: datetime, *, batches: bool
) -> Removed:
    removed = Removed()
    seen: set[str] = set()
    while batch := [job for job in jobs.expired(batches=batches, before=before) if job.id not in seen]:
        for job in batch:
            removed += remove_outputs(job, results, files)
        removed.rows += jobs.delete_many([job.id for job in batch])
        seen.update(job.id for job in batch)  # a row that was not deleted (re-queued meanwhile) is not retried
    return removed
