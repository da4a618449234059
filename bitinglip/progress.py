"""Rich progress bars for model installs followed from the CLI: a flow run in this process (a local
pull), or a download job on a remote platform (bitinglip/cli/pull.py), drawn alike."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from bitinglip.config import Settings
from bitinglip.models import installer
from bitinglip.models.backends import RequestedBackend
from bitinglip.models.catalog import Task
from bitinglip.models.install_spec import resolve_install

_LABELS = {"fetch": "fetching", "convert": "converting to safetensors", "install": "verifying + installing"}


def install_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=console
    )


class PhaseBars:
    """One bar per phase of an install (fetch, convert, install), as the installer reports them."""

    def __init__(self, progress: Progress, name: str) -> None:
        self.progress = progress
        self.name = name
        self.bars: dict[str, TaskID] = {}

    def __call__(self, step: installer.Step) -> None:
        self.draw(step.phase, step.done, step.total)

    def draw(self, phase: str, done: int, total: int) -> None:
        label = f"{self.name}: {_LABELS.get(phase, phase)}"
        if phase == "fetch" and total:
            label += f" ({total / 1e6:.1f} MB)"
        if phase not in self.bars:
            self.bars[phase] = self.progress.add_task(label, total=total or 1)
        self.progress.update(self.bars[phase], description=label, completed=done, total=total or 1)


def pull_with_progress(
    settings: Settings,
    console: Console,
    name: str,
    source: str | None = None,
    revision: str | None = None,
    backend: RequestedBackend = "auto",
    task_type: Task | None = None,
) -> dict[str, object]:
    from prefect import tags

    from flows.download import download_model

    spec = resolve_install(settings, name, source, revision, task_type, backend)  # refused before any run
    with install_progress(console) as progress, tags(*cli_run_tags(settings, "download", spec.model_id)):
        remove = installer.add_progress_listener(PhaseBars(progress, name))
        try:
            return download_model(name=name, source=source, revision=revision, task_type=task_type, backend=backend)
        finally:
            remove()


def cli_run_tags(settings: Settings, kind: str, model: str) -> list[str]:
    """A run the CLI starts in its own process carries the tags a dispatched one does (flows/submit.py),
    so the Prefect UI finds it by owner too: the home's admin, whose platform the local CLI runs."""
    return ["bitinglip", kind, f"model:{model}", f"owner:{settings.admin_username}", "via:cli"]
