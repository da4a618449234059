"""Install steps shared by the download flow and the CLI: fetch -> convert -> verify -> move in.

Progress goes to whoever listens in this process (the CLI's rich bar, the flow's Prefect artifact)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bitinglip.config import Settings
from bitinglip.models.catalog import Task
from bitinglip.models.convert import convert_gguf, gguf_file
from bitinglip.models.sources import SourceRef, make_source
from bitinglip.models.store import Manifest, ModelStore

ProgressListener = Callable[[str, int, int], None]  # (phase, done, total)
_listeners: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> Callable[[], None]:
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(phase: str, done: int, total: int) -> None:
    for listener in list(_listeners):
        listener(phase, done, total)


def fetch(settings: Settings, ref: SourceRef, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    make_source(ref, settings).fetch(ref, dest, lambda done, total: report("fetch", done, total))


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
