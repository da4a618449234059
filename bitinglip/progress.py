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

        def listener(step: installer.Step) -> None:
            label = f"{name}: {_LABELS.get(step.phase, step.phase)}"
            if step.phase == "fetch":
                label += f" ({step.total / 1e6:.1f} MB)"
            if step.phase not in tasks:
                tasks[step.phase] = progress.add_task(label, total=step.total or 1)
            progress.update(tasks[step.phase], description=label, completed=step.done, total=step.total or 1)

        remove = installer.add_progress_listener(listener)
        try:
            return download_model(name=name, source=source, revision=revision, task_type=task_type, backend=backend)
        finally:
            remove()
