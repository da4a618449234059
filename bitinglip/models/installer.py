"""Install steps shared by the download flow and the CLI: fetch -> convert -> verify -> move in.

Progress goes to whoever listens in this process (the CLI's rich bar, the flow's Prefect artifact)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from bitinglip.config import Settings
from bitinglip.errors import InvalidRequest
from bitinglip.models.backends import Backend, choose_backend, find_gguf
from bitinglip.models.catalog import Task
from bitinglip.models.convert import convert_gguf, gguf_file
from bitinglip.models.sources import SourceRef, make_source
from bitinglip.models.store import Manifest, ModelStore, sha256_file

CHECKSUMS = "SHA256SUMS"  # optional, in the source: `<sha256>  <relative path>` lines (sha256sum format)


class ChecksumMismatch(InvalidRequest):
    code = "checksum_mismatch"


class Step(NamedTuple):
    """One progress report: `done` of `total` bytes (fetch) or steps (convert, install); a total of
    0 is not known. The file counts come from the fetch (None in the later phases)."""

    phase: str  # fetch | convert | install
    done: int
    total: int
    files_done: int | None = None
    files_total: int | None = None


# The share of a whole install each phase stands for: converting a GGUF is slow, moving in is a rename.
PHASE_SPANS = {"fetch": (0.0, 0.6), "convert": (0.6, 0.35), "install": (0.95, 0.05)}


def overall(step: Step) -> float:
    """How far the whole install is, 0 to 1: the phase's start plus its share done (by bytes, else by
    files when only they are known)."""
    start, span = PHASE_SPANS.get(step.phase, (0.0, 1.0))
    if step.total:
        part = step.done / step.total
    elif step.files_total:
        part = (step.files_done or 0) / step.files_total
    else:
        part = 0.0
    return start + span * min(max(part, 0.0), 1.0)


ProgressListener = Callable[[Step], None]
_listeners: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> Callable[[], None]:
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(step: Step) -> None:
    for listener in list(_listeners):
        listener(step)


def fetch(settings: Settings, ref: SourceRef, dest: Path) -> None:
    """Fetch into `dest` (kept across retries, so sources can resume) and check any SHA256SUMS the
    source ships before anything else looks at the files."""
    dest.mkdir(parents=True, exist_ok=True)
    make_source(ref, settings).fetch(ref, dest, lambda t: report(Step("fetch", *t)))
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


class Prepared(NamedTuple):
    """What `convert` laid out: the backend that will serve it, and the GGUF it was converted from."""

    backend: Backend
    converted_from: str | None


def convert(fetched: Path, out: Path, backend: str = "auto", task: Task = "text") -> Prepared:
    """Lay out in `out` what the chosen backend serves (backends.py decides which): llama.cpp keeps
    the GGUF file as it is and nothing else; transformers converts a GGUF to safetensors, or takes
    the fetched files as they are."""
    chosen = choose_backend(backend, fetched, task)
    if chosen == "llama.cpp":
        gguf = find_gguf(fetched)
        if gguf is None:  # choose_backend saw one
            raise InvalidRequest("the source has no .gguf file", param="backend")
        out.mkdir(parents=True)
        gguf.rename(out / gguf.name)
        return Prepared("llama.cpp", None)
    gguf = gguf_file(fetched)
    if gguf is None:
        fetched.rename(out)
        return Prepared("transformers", None)
    report(Step("convert", 0, 1))
    convert_gguf(gguf.parent, gguf, out)
    report(Step("convert", 1, 1))
    return Prepared("transformers", gguf.name)


def install_from(
    settings: Settings,
    store: ModelStore,
    source: str,
    *,
    name: str,
    revision: str,
    task: Task,
    backend: str = "auto",
) -> Manifest:
    """All steps in this process (tests, benchmarks); the download flow runs them as tracked tasks."""
    from bitinglip.models.sources import parse_source

    with store.staging() as staging:
        fetch(settings, parse_source(source), staging / "fetched")
        prepared = convert(staging / "fetched", staging / "model", backend, task)
        return install(
            store,
            staging / "model",
            name=name,
            revision=revision,
            task=task,
            source=source,
            converted_from=prepared.converted_from,
            backend=prepared.backend,
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
    backend: Backend,
) -> Manifest:
    report(Step("install", 0, 1))
    manifest = store.install(
        staged,
        name=name,
        revision=revision,
        task=task,
        source=source,
        converted_from=converted_from,
        backend=backend,
    )
    report(Step("install", 1, 1))
    return manifest
