"""`bitinglip up`: the whole platform on one machine, in the foreground."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape

from bitinglip import prefect_server, procctl
from bitinglip.config import Settings
from bitinglip.pidfile import AlreadyRunning, PidFile
from bitinglip.supervisor import Child, RestartPolicy, Supervisor

PROJECT_DIR = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def local_admin_key(settings: Settings) -> str:
    """The admin key of a one-machine platform: from settings, else made once and kept (0600) in
    home/admin.key, where the CLI finds it too."""
    if settings.admin_api_key is not None:
        return settings.admin_api_key.get_secret_value()
    path = settings.admin_key_file
    if not path.exists():
        from bitinglip.auth.credentials import new_api_key

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_api_key()[0])
    return path.read_text().strip()


LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def cluster_settings(settings: Settings) -> Settings:
    """`up --cluster` on one machine: Prefect on PostgreSQL + Redis, the gateway DB on PostgreSQL,
    limits in Redis; whatever the environment sets already wins."""
    pg = LOCAL_POSTGRES.replace("postgresql://", "")
    return settings.model_copy(
        update={
            "database_url": settings.database_url or f"postgresql+psycopg://{pg}/bitinglip",
            "prefect_database_url": settings.prefect_database_url or f"postgresql+asyncpg://{pg}/bitinglip_prefect",
            "prefect_redis_url": settings.prefect_redis_url or LOCAL_REDIS,
            "redis_url": settings.redis_url or LOCAL_REDIS,
        }
    )


class DatabaseUnreachable(RuntimeError):
    """A configured PostgreSQL cannot be reached (or the URL is no database URL): said in one line."""


def ensure_postgres_databases(*urls: str | None) -> None:
    """Create the PostgreSQL databases these URLs name, when missing (needs a role that may)."""
    import psycopg
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    for raw in urls:
        if not raw or not raw.startswith("postgresql"):
            continue
        try:
            url = make_url(raw)
        except ArgumentError as exc:
            raise DatabaseUnreachable(f"not a database URL: {exc}") from exc
        admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{url.database}"')
        except psycopg.Error as exc:
            where = url.render_as_string(hide_password=True)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnreachable(f"PostgreSQL at {where} cannot be used: {reason}") from exc


def shared_cores_env(settings: Settings, workers: int) -> dict[str, str]:
    """Model workers sharing one machine split its cores: two torch pools of all cores each only
    thrash (unless BITINGLIP_TORCH_THREADS says otherwise)."""
    if workers <= 1 or settings.torch_threads:
        return {}
    return {"BITINGLIP_TORCH_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}


def replica_env(settings: Settings, index: int) -> dict[str, str]:
    """Replica i of a gateway / model worker: ports +10*i, its own worker id."""
    if index == 0:
        return {}
    port = settings.worker_port + 10 * index
    return {
        "BITINGLIP_GATEWAY_PORT": str(settings.gateway_port + 10 * index),
        "BITINGLIP_WORKER_PORT": str(port),
        "BITINGLIP_WORKER_ID": f"{settings.worker_host}:{port}",
        "BITINGLIP_WORKER_URL": f"http://{urlsplit(settings.worker_url).hostname}:{port}",  # not the first's
    }


def child_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, **settings.prefect_env(), "BITINGLIP_PROJECT_DIR": str(PROJECT_DIR)}
    env["BITINGLIP_HOME"] = str(settings.home_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NOTIFY_SOCKET", None)  # systemd hears from the supervisor alone
    return env


def ensure_work_pools(settings: Settings) -> None:
    """Create or update the pools from work-pools/*.json (their base job templates)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists

    from bitinglip.prefect_client import prefect_client_settings

    with prefect_client_settings(settings), get_client(sync_client=True) as client:
        for template_file in sorted((PROJECT_DIR / "work-pools").glob("*.json")):
            template = json.loads(template_file.read_text())
            name = template_file.stem
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            except ObjectAlreadyExists:
                client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))


def deploy(settings: Settings, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=PROJECT_DIR,
        env=env or child_env(settings),
        check=True,
        capture_output=True,
    )


def install_missing_models(settings: Settings) -> None:
    """Each install is a download flow run in a child process: Prefect's log and event workers drain
    at exit, which must happen while the server is still up."""
    from bitinglip.models.catalog import load_catalog
    from bitinglip.models.store import ModelStore

    installed = {m.name for m in ModelStore(settings.store_dir).installed()}
    for model in settings.worker_models:
        name = model.partition("@")[0]
        if name not in installed and name in load_catalog():
            subprocess.run(
                [sys.executable, "-m", "bitinglip.cli", "models", "pull", name],
                env=child_env(settings),
                check=True,
            )


def release_dead_worker(settings: Settings, worker_id: str) -> int:
    """Does for a killed model worker what its own shutdown would have done, and returns how many
    jobs it took back: the worker's row goes (the gateway stops routing to it at once and answers
    503 + Retry-After until it is back) and the jobs it was running return to the queue. The
    reaper cannot do this for `up`'s workers: a restarted worker comes back under the same id,
    often before its old heartbeat is stale, and a live worker's jobs are never reaped, so they
    would stay `running` for good. Only the parent knows for sure the process is gone (its group
    is killed before this runs), so nothing it ran can still finish."""
    from bitinglip.crypto import Cipher
    from bitinglip.db.session import Database
    from bitinglip.db.workers import WorkerRegistry
    from bitinglip.jobs.store import JobStore

    db = Database(settings.gateway_db_url)
    try:
        WorkerRegistry(db, settings.worker_stale_after_s).remove(worker_id)
        return JobStore(db, Cipher.from_settings(settings)).requeue_worker(worker_id)
    finally:
        db.dispose()


def _worker_id(settings: Settings, index: int) -> str:
    return replica_env(settings, index).get("BITINGLIP_WORKER_ID", settings.worker_name)


class StopRequested(KeyboardInterrupt):
    """A stop signal (or the death of our parent), handled as Ctrl-C is: everything stops."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP all stop the platform, whatever they were set to before: a
    non-interactive shell starts background jobs with SIGINT ignored, and systemd, `docker stop`
    and `kill` send SIGTERM. Only the first one interrupts: a second (systemd and a terminal both
    signalling) must not cut the stop short and leave children running."""
    received: list[str] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if not received:
            received.append(signal.Signals(signum).name)
            raise StopRequested(received[0])

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """While the platform stops, another signal must not cut `stop_all` short and leave children
    running (it escalates to SIGKILL on its own after its grace)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ports_in_use(settings: Settings, replicas: int) -> list[str]:
    """The ports `up` would listen on that something else holds already (another platform from
    another home, a stray gateway): said up front instead of a child failing to bind."""
    wanted = [("Prefect server", settings.prefect_host, settings.prefect_port)]
    for i in range(replicas):
        wanted.append(("gateway", settings.gateway_host, settings.gateway_port + 10 * i))
        wanted.append(("model worker", settings.worker_host, settings.worker_port + 10 * i))
    busy = []
    for what, host, port in wanted:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(f"{host}:{port} ({what})")
    return busy


def run_platform(settings: Settings, console: Console, install: bool = True, replicas: int = 1) -> int:
    """Every child is restarted when it dies (`restart_attempts` within `restart_window_s`, with
    backoff); the gateway keeps answering meanwhile. A crash loop stops everything and returns 1."""
    started = time.monotonic()
    pid_file = PidFile(settings.pid_file)
    try:
        pid_file.acquire({"gateway_url": settings.gateway_url, "replicas": replicas})
    except AlreadyRunning as exc:
        console.print(f"[red bold]not started:[/] {exc}")
        return 1
    try:
        with _stop_on_signals():
            parent = procctl.bind_to_parent()  # our parent's end stops us as SIGTERM does
            busy = ports_in_use(settings, replicas)
            if busy:
                console.print(f"[red bold]not started:[/] in use already: {', '.join(busy)}")
                return 1
            return _run(settings, console, install, replicas, started, parent)
    except StopRequested as stop:  # before the supervisor existed: nothing to stop
        console.print(f"stopped ({stop.reason})")
        return 0
    finally:
        pid_file.release()


def _run(settings: Settings, console: Console, install: bool, replicas: int, started: float, parent: int) -> int:
    for setting, url in (
        ("DATABASE_URL", settings.database_url),
        ("PREFECT_DATABASE_URL", settings.prefect_database_url),
    ):
        try:
            ensure_postgres_databases(url)
        except DatabaseUnreachable as exc:
            console.print(f"[red bold]not started:[/] BITINGLIP_{setting}: {escape(str(exc))}", soft_wrap=True)
            return 1
    env = child_env(settings)
    env["BITINGLIP_ADMIN_API_KEY"] = local_admin_key(settings)
    sup = Supervisor(
        settings.home_dir / "logs", env, rotation=settings.log_rotation_for, bind_children=True, subreaper=True
    )
    restart = RestartPolicy(attempts=settings.restart_attempts, window_s=settings.restart_window_s)
    restart_worker = dataclasses.replace(restart, essential=False)  # a crash-looping worker stays down alone

    def on_worker_crash(index: int) -> Callable[[Child], None]:
        def release(child: Child) -> None:
            taken = release_dead_worker(settings, _worker_id(settings, index))
            log.warning("%s: %d job(s) it was running went back to the queue", child.name, taken)

        return release

    py = sys.executable
    try:
        console.print(f"[bold]BitingLip[/] home: {settings.home_dir}")
        with console.status("starting Prefect server"):
            sup.start(
                "prefect-server",
                prefect_server.command(settings, settings.prefect_host, settings.prefect_port),
                restart=restart,
                stop_last=True,  # the pool workers' shutdown talks to it
            )
            sup.wait_http(f"{settings.prefect_api}/health", timeout=90)
        with console.status("work pools and deployments"):
            ensure_work_pools(settings)
            deploy(settings)
        if install:
            install_missing_models(settings)
        with console.status("starting model workers, pool workers and gateways"):
            for i in range(replicas):
                suffix = f"-{i + 1}" if replicas > 1 else ""
                sup.start(
                    f"model-worker{suffix}",
                    [py, "-m", "bitinglip.cli", "worker"],
                    PROJECT_DIR,
                    replica_env(settings, i),
                    restart=restart_worker,
                    on_crash=on_worker_crash(i),
                )
                for pool in ("gpu", "cpu"):
                    sup.start(
                        f"pool-worker-{pool}{suffix}",
                        [py, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                        cwd=PROJECT_DIR,
                        restart=restart_worker,
                        # Orphaned, a pool worker would drain: wait for its flow runs (in sessions of
                        # their own, so nothing stops them) and retry its goodbyes to a server that is
                        # gone. Ended outright instead; the runs it started finish or fail on their own.
                        death_signal=signal.SIGKILL,
                    )
                sup.start(
                    f"gateway{suffix}",
                    [py, "-m", "bitinglip.cli", "gateway"],
                    PROJECT_DIR,
                    replica_env(settings, i),
                    restart=restart,
                )
            for i in range(replicas):
                sup.wait_http(f"http://{settings.worker_host}:{settings.worker_port + 10 * i}/health", timeout=180)
                sup.wait_http(f"http://{settings.gateway_host}:{settings.gateway_port + 10 * i}/health", timeout=60)
        elapsed = time.monotonic() - started
        console.print(f"[green bold]ready[/] in {elapsed:.1f}s")
        console.print(f"  console    {settings.gateway_url}/ui   (user {settings.admin_username}; password: secrets)")
        for i in range(replicas):
            url = f"http://{settings.gateway_host}:{settings.gateway_port + 10 * i}"
            console.print(f"  gateway    {url}   (OpenAPI: {url}/docs)")
        console.print(
            f"  Prefect UI {settings.prefect_ui_url}   (it asks for the auth string: "
            f"prefect_auth_string in {settings.secrets_file})"
        )
        console.print(f"  logs       {settings.home_dir / 'logs'}")
        console.print(f"  admin key  {settings.admin_key_file}  (send it as Authorization: Bearer ...)")
        console.print(f"  secrets    {settings.secrets_file}  (admin password, JWT secret, worker token; mode 0600)")
        console.print("try:")
        console.print(
            f"  curl -s {settings.gateway_url}/api/v1/inference/text -H 'Content-Type: application/json' "
            f'-H "Authorization: Bearer $(cat {settings.admin_key_file})" '
            """-d '{"messages":[{"role":"user","content":"What is the capital of France? Answer with one word."}],"""
            """"max_tokens":32,"temperature":0}'""",
            soft_wrap=True,
        )
        console.print(f"Ctrl-C, SIGTERM or `bitinglip down` stops everything (supervisor pid {os.getpid()}).")
        procctl.sd_notify(f"READY=1\nSTATUS=ready in {elapsed:.0f}s, gateway {settings.gateway_url}")
        while True:
            sup.check()
            if os.getppid() != parent:  # the parent went before the kernel could be told to signal us
                raise StopRequested("parent exited")
            time.sleep(0.5)
    except KeyboardInterrupt as stop:
        reason = stop.reason if isinstance(stop, StopRequested) else "SIGINT"
        console.print(f"stopping ({reason})...")
        return 0
    except Exception as exc:
        console.print(f"[red bold]platform stopped:[/] {escape(str(exc))}", soft_wrap=True)  # the tail is no markup
        return 1
    finally:
        procctl.sd_notify("STOPPING=1")
        with _signals_ignored():
            sup.stop_all(settings.stop_grace_s)
        console.print("all processes stopped")
