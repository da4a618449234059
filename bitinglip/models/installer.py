"""Install steps shared by the download flow and the CLI: fetch -> convert -> verify -> move in.

Progress goes to whoever listens in this process (the CLI's rich bar, the flow's Prefect artifact)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bitinglip.config import Settings
from bitinglip.errors import InvalidRequest
from bitinglip.models.catalog import Task
from bitinglip.models.convert import convert_gguf, gguf_file
from bitinglip.models.sources import SourceRef, make_source
from bitinglip.models.store import Manifest, ModelStore, sha256_file

CHECKSUMS = "SHA256SUMS"  # optional, in the source: `<sha256>  <relative path>` lines (sha256sum format)


class ChecksumMismatch(InvalidRequest):
    code = "checksum_mismatch"


ProgressListener = Callable[[str, int, int], None]  # (phase, done, total)
_listeners: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> Callable[[], None]:
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(phase: str, done: int, total: int) -> None:
    for listener in list(_listeners):
        listener(phase, done, total)


def fetch(settings: Settings, ref: SourceRef, dest: Path) -> None:
    """Fetch into `dest` (kept across retries, so sources can resume) and check any SHA256SUMS the
    source ships before anything else looks at the files."""
    dest.mkdir(parents=True, exist_ok=True)
    make_source(ref, settings).fetch(ref, dest, lambda done, total: report("fetch", done, total))
    verify_checksums(dest)


def verify_checksums(folder: Path) -> None:
    sums = folder / CHECKSUMS
    if not sums.is_file():
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        expected, _, rel = line.strip().partition("  ")
        file = (folder / rel.lstrip("*")).resolve()
        if not file.is_relative_to(folder.resolve()) or not file.is_file():
            raise ChecksumMismatch(f"{rel} is listed in {CHECKSUMS} but missing from the source", param="source")
        if sha256_file(file) != expected.lower():
            raise ChecksumMismatch(f"checksum mismatch for {rel}: the source file is corrupted", param="source")


def convert(fetched: Path, out: Path) -> str | None:
    """Returns the converted file's name, or None when the fetched files are used as they are."""
    gguf = gguf_file(fetched)
    if gguf is None:
        fetched.rename(out)
        return None
    report("convert", 0, 1)
    convert_gguf(gguf.parent, gguf, out)
    report("convert", 1, 1)
    return gguf.name


def install_from(
    settings: Settings, store: ModelStore, source: str, *, name: str, revision: str, task: Task
) -> Manifest:
    """All steps in this process (tests, benchmarks); the download flow runs them as tracked tasks."""
    from bitinglip.models.sources import parse_source

    with store.staging() as staging:
        fetch(settings, parse_source(source), staging / "fetched")
        converted_from = convert(staging / "fetched", staging / "model")
        return install(
            store,
            staging / "model",
            name=name,
            revision=revision,
            task=task,
            source=source,
            converted_from=converted_from,
        )


def install(
    store: ModelStore,
    staged: Path,
    *,
    name: str,
    revision: str,
    task: Task,
    source: str,
    converted_from: str | None,
) -> Manifest:
    report("install", 0, 1)
    manifest = store.install(
        staged, name=name, revision=revision, task=task, source=source, converted_from=converted_from
    )
    report("install", 1, 1)
    return manifest
