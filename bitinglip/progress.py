"""Rich progress bars for model installs run from the CLI (the flow itself runs in this process)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from bitinglip.config import Settings
from bitinglip.models import installer
from bitinglip.models.backends import RequestedBackend
from bitinglip.models.catalog import Task

_LABELS = {"fetch": "fetching", "convert": "converting to safetensors", "install": "verifying + installing"}


def pull_with_progress(
    settings: Settings,
    console: Console,
    name: str,
    source: str | None = None,
    revision: str | None = None,
    backend: RequestedBackend = "auto",
    task_type: Task | None = None,
) -> dict[str, object]:
    from flows.download import download_model

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, TaskID] = {}

        def listener(phase: str, done: int, total: int) -> None:
            label = f"{name}: {_LABELS.get(phase, phase)}"
            if phase == "fetch":
                label += f" ({total / 1e6:.1f} MB)"
            if phase not in tasks:
                tasks[phase] = progress.add_task(label, total=total or 1)
            progress.update(tasks[phase], description=label, completed=done, total=total or 1)

        remove = installer.add_progress_listener(listener)
        try:
            return download_model(name=name, source=source, revision=revision, task_type=task_type, backend=backend)
        finally:
            remove()
