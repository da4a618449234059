"""What to install, from what a caller gave: one rule for the catalog name, source, task, revision and backend,
read by the gateway when it accepts a download and by the download flow when it runs one (a flow run
started by hand from the Prefect UI gets the same answer the API would have given)."""

from __future__ import annotations

from dataclasses import dataclass

from bitinglip.config import Settings
from bitinglip.errors import InvalidRequest
from bitinglip.models.backends import RequestedBackend, check_backend
from bitinglip.models.catalog import Task, load_catalog
from bitinglip.models.names import check_part
from bitinglip.models.sources import check_allowed, parse_source


@dataclass(frozen=True)
class InstallSpec:
    name: str
    source: str
    revision: str
    task: Task
    backend: RequestedBackend = "auto"  # the files decide at install (backends.choose_backend)

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.revision}"


def resolve_install(
    settings: Settings,
    name: str | None = None,
    source: str | None = None,
    revision: str | None = None,
    task: Task | None = None,
    backend: str | None = None,
) -> InstallSpec:
    """Precedence, field by field: what the caller gave (`auto` counts as not given for the backend);
    then the source URI (its `@revision`, its last path part as the name); then the catalog entry of
    that name (its source, task, and its revision and backend when its own source is used); then
    revision `main`, backend `auto`. A malformed or forbidden source, an unsafe name or revision, or an
    unknown backend is refused here, before anything is recorded."""
    requested = check_backend("auto" if backend is None else backend)
    catalog = load_catalog()
    entry = catalog.get(name) if name else None
    if source is None and entry is None:
        raise InvalidRequest("give a source URI, or the name of a catalog model", param="source")
    source = source or (entry.source if entry else "")
    ref = parse_source(source)
    check_allowed(ref, settings)
    name = check_part(name or ref.location.rstrip("/").rsplit("/", 1)[-1].split(".")[0], "name")
    entry = entry or catalog.get(name)
    task = task or (entry.task if entry else None)
    if task is None:
        raise InvalidRequest("task is required for a model outside the catalog", param="task")
    catalog_revision = entry.revision if entry and entry.source == source else None
    revision = check_part(revision or ref.revision or catalog_revision or "main", "revision")
    if requested == "auto" and entry is not None and entry.source == source and entry.backend is not None:
        requested = entry.backend
    return InstallSpec(name=name, source=source, revision=revision, task=task, backend=requested)
