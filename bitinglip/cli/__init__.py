"""`bitinglip`: bring the platform up, inspect it, run single components."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bitinglip.cli import help as cli_help
from bitinglip.config import Settings, get_settings
from bitinglip.errors import BitingLipError
from bitinglip.logs import configure_logging
from bitinglip.models.backends import RequestedBackend
from bitinglip.models.catalog import Task as ModelTask


class OneLineErrors(typer.Typer):
    """The CLI's entry point: an ordinary mistake (a bad argument, an invalid setting, an error the
    platform answers) is one line and a non-zero exit, never a traceback or a boxed panel."""

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # a bad argument, option or command (click's words)
            message, context = exc.format_message(), getattr(exc, "ctx", None)
            if not message.strip() or "\n" in message:  # a group named alone (`bitinglip tasks`): its help
                console.out(message.strip(), highlight=False)
                sys.exit(0)
            message = message.replace("Value error, ", "")  # pydantic's prefix, through typer
            fail(message + (f" (see `{context.command_path} --help`)" if context else ""), exc.exit_code)
        except typer.Abort:  # Ctrl-C or end of input at a prompt
            fail("aborted", 130)
        except BitingLipError as exc:
            fail(exc.message)
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            first = exc.errors()[0]  # the environment's settings (BITINGLIP_*)
            name = "_".join(str(p) for p in first["loc"][:1]).upper()
            fail(f"invalid setting BITINGLIP_{name}: {first['msg']}", 2)
        sys.exit(code if isinstance(code, int) else 0)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line (markup-free: it may quote what the user typed) and the exit code."""
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


cli_help.install()
app = OneLineErrors(help="BitingLip: AI inference as tracked jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Install and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
batch_app = typer.Typer(help="Run OpenAI-format batch files.", no_args_is_help=True)
app.add_typer(batch_app, name="batch")
console = Console()


def _settings(process: str) -> Settings:
    """Settings for this process, every secret present (generated into the home on first start);
    Prefect's environment is derived from them before Prefect loads."""
    from bitinglip.home_secrets import WeakSecret, ensure_secrets

    try:
        ensure_secrets(get_settings())
    except WeakSecret as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    get_settings.cache_clear()  # read again: the secrets file now holds what was missing
    settings = get_settings()
    os.environ.update(settings.prefect_env())
    configure_logging(settings, process, console_level="WARNING" if process == "cli" else None)
    return settings


@app.command()
def up(
    install: Annotated[bool, typer.Option(help="Install missing default models first.")] = True,
    cluster: Annotated[
        bool,
        typer.Option(
            help="Prefect on PostgreSQL + Redis, gateway DB on PostgreSQL, limits in Redis (127.0.0.1 unless "
            "set), two gateways, two model workers, two pool workers per pool."
        ),
    ] = False,
) -> None:
    """Start Prefect, work pools, deployments, model workers, pool workers and gateways."""
    from bitinglip.platform import cluster_settings, run_platform

    settings = _settings("up")
    if cluster:
        settings = cluster_settings(settings)
        os.environ.update(settings.prefect_env())
        for name in ("database_url", "prefect_database_url", "prefect_redis_url", "redis_url"):
            os.environ[f"BITINGLIP_{name.upper()}"] = str(getattr(settings, name))
    raise typer.Exit(run_platform(settings, console, install=install, replicas=2 if cluster else 1))


def _serve(app: Any, host: str, port: int, trusted_proxies: list[str] | None = None) -> None:
    """uvicorn with our logging (log_config=None), a bounded graceful shutdown and a quiet idle loop
    (`bitinglip.quiet_server`). Forwarded headers count only from configured proxies (uvicorn would
    trust 127.0.0.1 by default)."""
    import uvicorn

    from bitinglip import quiet_server

    quiet_server.install()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=10,
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=",".join(trusted_proxies or []) or None,
    )


def short_openmp_spins(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """Before torch loads (libgomp reads it once): OpenMP's default spin at a barrier burned ~20% more
    CPU per prefill while Prefect's task runs shared the cores (docs/architecture.md §3.8)."""
    environ.setdefault("GOMP_SPINCOUNT", str(settings.omp_spin_count))


@app.command()
def worker() -> None:
    """Run a model worker: warm models, dynamic batching, internal API, the async-job pump."""
    settings = _settings("worker")
    short_openmp_spins(settings, os.environ)
    from bitinglip.worker.app import create_worker_app

    _serve(create_worker_app(settings), settings.worker_host, settings.worker_port)


@app.command()
def gateway() -> None:
    """Run the API gateway."""
    settings = _settings("gateway")
    from api.app import create_app

    _serve(create_app(settings), settings.gateway_host, settings.gateway_port, settings.trusted_proxies)


@app.command()
def status() -> None:
    """Each component, its URL and health; exits 1 when anything is down: the gateway, Prefect, the
    dispatcher, or a model worker whose heartbeat stopped (or when no model worker is registered)."""
    import httpx

    from bitinglip.pidfile import running

    settings = _settings("cli")
    table = Table("component", "url", "health", "details")
    if settings.remote_gateway:
        table.add_row("supervisor", "-", "remote", f"the gateway at {settings.gateway_url} (BITINGLIP_GATEWAY_URL)")
    else:
        supervisor = running(settings.pid_file)
        table.add_row(
            "supervisor",
            str(settings.pid_file),
            f"pid {supervisor.pid}" if supervisor else "not running",
            "bitinglip up from this home" if supervisor else "no `bitinglip up` holds this home",
        )
    down: list[str] = []
    try:
        response = httpx.get(f"{settings.gateway_url}/health", timeout=5)
        body = response.json()
        gateway = "ok" if response.status_code == 200 else str(body.get("status", "degraded"))
        table.add_row("gateway", settings.gateway_url, gateway, "")
        prefect, dispatcher = body["prefect"], body["dispatcher"]["status"]
        table.add_row("prefect", prefect["url"], prefect["status"], f"dispatcher {dispatcher}")
        down += [] if prefect["status"] == "ok" else ["prefect"]
        down += [] if dispatcher == "ok" else ["dispatcher"]
        for w in body["workers"]:
            table.add_row(
                f"worker {w['id']}",
                w["url"],
                "ok" if w["healthy"] else "stale",
                f"{w['device']}, models: {', '.join(w['models']) or '-'}, queue {w['queue_depth']}",
            )
            down += [] if w["healthy"] else [f"worker {w['id']}"]
        if not body["workers"]:
            table.add_row("model workers", "-", "none", "no worker has registered")
            down.append("model workers")
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        table.add_row("gateway", settings.gateway_url, "down", type(exc).__name__)
        down.append("gateway")
    console.print(table)
    if down:
        console.print(f"[red]down:[/] {', '.join(down)}", highlight=False)
        raise typer.Exit(1)


@models_app.command("pull")
def models_pull(
    name: str,
    source: Annotated[str | None, typer.Option(help="hf://, s3://, file:// or pkg:// URI.")] = None,
    revision: str | None = None,
    backend: Annotated[
        RequestedBackend,
        typer.Option(
            help="What serves it: llama.cpp runs a GGUF as it is, transformers converts it to safetensors; "
            "auto: llama.cpp for a GGUF when llama-cpp-python is installed, else transformers.",
        ),
    ] = "auto",
    task: Annotated[
        ModelTask | None,
        typer.Option(help="What the model does; needed with --source for a model the catalog does not know."),
    ] = None,
) -> None:
    """Install a model (a Prefect flow run, followed with a progress bar): in this process, or on the
    platform behind BITINGLIP_GATEWAY_URL when that is set (with an admin's key)."""
    settings = _settings("cli")
    if settings.remote_gateway:
        from bitinglip.cli.pull import pull_through_gateway

        result = pull_through_gateway(name, source, revision, backend, task)
    else:
        from bitinglip.progress import pull_with_progress

        _require_prefect(settings)
        result = pull_with_progress(settings, console, name, source, revision, backend, task)
    console.print(f"installed {result['id']} ({result['backend']})")


def _require_prefect(settings: Settings) -> None:
    """A local pull is a flow run: it needs the platform's Prefect server."""
    import httpx

    try:
        httpx.get(f"{settings.prefect_api}/health", timeout=5).raise_for_status()
    except httpx.HTTPError:
        fail(
            f"the Prefect API at {settings.prefect_api} is not reachable: start the platform (`bitinglip up`), "
            "or set BITINGLIP_GATEWAY_URL to pull through a running gateway"
        )


@models_app.command("list")
def models_list() -> None:
    """Models in the local store."""
    from bitinglip.models.store import ModelStore

    settings = _settings("cli")
    table = Table("id", "task", "backend", "size", "source")
    for m in ModelStore(settings.store_dir).installed():
        table.add_row(m.id, m.task, m.backend, f"{m.size_bytes / 1e6:.1f} MB", m.source)
    console.print(table)


def _credentials(settings: Settings) -> dict[str, str]:
    """BITINGLIP_API_KEY, else the local platform's admin key file."""
    if settings.api_key is not None:
        key = settings.api_key.get_secret_value()
    elif settings.admin_key_file.exists():
        key = settings.admin_key_file.read_text().strip()
    else:
        return {}
    return {"Authorization": f"Bearer {key}"}


def _segment(value: str) -> str:
    """A name or id typed by the user as one path segment of a gateway URL: quoted, so that
    `../auth/keys/ID` stays one (unknown) id instead of reaching another route."""
    if value in ("", ".", ".."):
        console.print(f"[red]not a name or id:[/] {value!r}")
        raise typer.Exit(2)
    return quote(value, safe="@")


def _gateway(method: str, path: str, timeout: float = 30, **kwargs: object) -> dict[str, Any]:
    """Calls the running gateway; prints its error envelope and exits non-zero on failure."""
    import httpx

    settings = _settings("cli")
    try:
        response = httpx.request(
            method,
            f"{settings.gateway_url}{path}",
            timeout=timeout,
            headers=_credentials(settings),
            **kwargs,  # type: ignore[arg-type]
        )
    except httpx.HTTPError as exc:
        fail(f"the gateway at {settings.gateway_url} is unreachable ({type(exc).__name__})")
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if response.status_code < 400 and media_type != "application/json":
        return {"content": response.content}
    try:
        body: dict[str, Any] = response.json() if response.content else {}
    except ValueError:  # not our gateway's answer (a proxy's error page, another service on the port)
        fail(f"{response.status_code}: {settings.gateway_url} answered something other than the gateway's JSON")
    if response.status_code >= 400:
        error = body.get("error", {})
        fail(f"{response.status_code}: {error.get('message') if isinstance(error, dict) else error}")
    return body


@models_app.command("show")
def models_show(model: str) -> None:
    """One model: registry record, files with sha256, where it is loaded."""
    body = _gateway("GET", f"/api/v1/models/{_segment(model)}")
    files = body.pop("files", None) or {}
    table = Table("field", "value")
    for key, value in body.items():
        table.add_row(key, str(value))
    console.print(table)
    files_table = Table("file", "size", "sha256")
    for name, entry in sorted(files.items()):
        files_table.add_row(name, f"{entry['size']:,}", entry["sha256"])
    console.print(files_table)


@models_app.command("rm")
def models_rm(model: str, force: Annotated[bool, typer.Option(help="Even if a worker has it loaded.")] = False) -> None:
    """Remove a model from the store and the registry."""
    _gateway("DELETE", f"/api/v1/models/{_segment(model)}", params={"force": str(force).lower()})
    console.print(f"removed {model}")


@models_app.command("pin")
def models_pin(model: str, off: Annotated[bool, typer.Option("--off", help="Unpin instead.")] = False) -> None:
    """Protect a model from disk-budget eviction and from workers unloading it on their own (keep-alive,
    memory budget); lift the protection with --off."""
    _gateway("POST", f"/api/v1/models/{_segment(model)}/{'unpin' if off else 'pin'}")
    console.print(f"{model} {'unpinned' if off else 'pinned'}")


WorkerOption = Annotated[str | None, typer.Option(help="One model worker's id (default: every healthy one).")]


@models_app.command("load")
def models_load(
    model: str,
    keep_alive: Annotated[
        str | None,
        typer.Option(help="Stay loaded this long after the last request: 30s, 10m, 1h; 0; -1 forever."),
    ] = None,
    worker: WorkerOption = None,
) -> None:
    """Load a model on the model workers now (unloading idle ones to make room within their budget)."""
    body = {} if keep_alive is None else {"keep_alive": keep_alive}
    params = {} if worker is None else {"worker": worker}
    answer = _gateway("POST", f"/api/v1/models/{_segment(model)}/load", timeout=900, json=body, params=params)
    for outcome in answer["workers"]:
        loaded = outcome.get("model") or {}
        size = _megabytes(loaded.get("memory_bytes"))
        console.print(f"{answer['model']} loaded on {outcome['worker']} ({size}, keep-alive {_keep(loaded)})")


@models_app.command("unload")
def models_unload(
    model: str,
    force: Annotated[bool, typer.Option(help="Even with requests running (they fail).")] = False,
    worker: WorkerOption = None,
) -> None:
    """Unload a model from the model workers (409 while it serves requests, unless --force)."""
    params = {"force": str(force).lower(), **({} if worker is None else {"worker": worker})}
    answer = _gateway("POST", f"/api/v1/models/{_segment(model)}/unload", timeout=120, params=params)
    for outcome in answer["workers"]:
        what = "unloaded from" if outcome["status"] == "unloaded" else "was not loaded on"
        console.print(f"{answer['model']} {what} {outcome['worker']}")


@app.command()
def ps() -> None:
    """What is loaded where: memory against each worker's budget, idle time, when an idle model is
    unloaded, requests (as of each worker's last heartbeat)."""
    body = _gateway("GET", "/api/v1/workers")
    table = Table("worker", "model", "backend", "memory", "idle", "expires in", "requests")
    for w in body["model_workers"]:
        budget = w.get("memory_budget_bytes")
        used = _megabytes(w.get("memory_used_bytes")) + (f" of {_megabytes(budget)}" if budget else " (no budget)")
        table.add_row(w["id"], f"{len(w['models'])} loaded", "", used, "", "", "")
        for m in w["models"]:
            table.add_row(
                "",
                m["id"] + (" (pinned)" if m.get("pinned") else ""),
                m.get("backend", ""),
                _megabytes(m.get("memory_bytes")),
                _seconds(m.get("idle_s")),
                _expires(m),
                f"{m['running']} running, {m['waiting']} waiting",
            )
        table.add_section()
    console.print(table)


def _megabytes(n: object) -> str:
    return "?" if not isinstance(n, int | float) else f"{n / 1e6:,.0f} MB"


def _seconds(s: object) -> str:
    from bitinglip.keep_alive import describe

    return "" if not isinstance(s, int | float) else describe(float(s))


def _keep(m: dict[str, Any]) -> str:
    from bitinglip.keep_alive import describe

    return describe(m.get("keep_alive_s"))


def _expires(m: dict[str, Any]) -> str:
    """When an idle model is unloaded: never (pinned, or keep-alive -1), or in so long."""
    if m.get("pinned"):
        return "never (pinned)"
    if "expires_in_s" not in m:
        return "?"  # a worker from before keep-alive
    expires = m["expires_in_s"]
    return "never" if expires is None else f"{_seconds(expires)} (keep-alive {_keep(m)})"


@batch_app.command("submit")
def batch_submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL in the OpenAI Batch format.")],
    endpoint: Annotated[str | None, typer.Option(help="Default: the url of the file's first line.")] = None,
    watch: Annotated[bool, typer.Option(help="Follow it with a progress bar and download the results.")] = False,
) -> None:
    """Upload FILE and start a batch; with --watch, wait and write FILE.output.jsonl / FILE.errors.jsonl."""
    import json

    data = file.read_bytes()
    if endpoint is None:
        first = next((line for line in data.splitlines() if line.strip()), b"{}")
        try:
            endpoint = str(json.loads(first).get("url") or "/v1/chat/completions")
        except ValueError:
            endpoint = "/v1/chat/completions"
    uploaded = _gateway("POST", "/v1/files", files={"file": (file.name, data)}, data={"purpose": "batch"})
    batch = _gateway("POST", "/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": endpoint})
    console.print(f"batch [bold]{batch['id']}[/] ({endpoint}, file {uploaded['id']}): {batch['status']}")
    if not watch:
        return
    batch = _watch_batch(str(batch["id"]))
    counts = batch["request_counts"]
    console.print(f"{batch['status']}: {counts['completed']} completed, {counts['failed']} failed of {counts['total']}")
    for key, suffix in (("output_file_id", "output"), ("error_file_id", "errors")):
        if batch.get(key):
            target = file.with_suffix(f".{suffix}.jsonl")
            target.write_bytes(_gateway("GET", f"/v1/files/{_segment(batch[key])}/content")["content"])
            console.print(f"{suffix}: {target}")
    if batch["status"] != "completed":
        raise typer.Exit(1)


def _watch_batch(batch_id: str) -> dict[str, Any]:
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("validating", total=None)
        while True:
            batch = _gateway("GET", f"/v1/batches/{_segment(batch_id)}")
            counts = batch["request_counts"]
            progress.update(
                bar,
                description=batch["status"],
                completed=counts["completed"] + counts["failed"],
                total=counts["total"] or None,
            )
            if batch["status"] in ("completed", "failed", "cancelled", "expired"):
                return batch
            time.sleep(1)


# Commands kept in their own modules, registered on `app` (they import the helpers above).
from bitinglip.cli import jobwatch, objects, ops  # noqa: E402,F401
