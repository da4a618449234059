"""`bitinglip up`: the whole platform on one machine, in the foreground."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from bitinglip.config import Settings
from bitinglip.supervisor import Supervisor

PROJECT_DIR = Path(__file__).resolve().parents[1]


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


def ensure_postgres_databases(*urls: str | None) -> None:
    """Create the PostgreSQL databases these URLs name, when missing (needs a role that may)."""
    import psycopg
    from sqlalchemy.engine import make_url

    for raw in urls:
        if not raw or not raw.startswith("postgresql"):
            continue
        url = make_url(raw)
        admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        with psycopg.connect(admin, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{url.database}"')


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
    return {
        "BITINGLIP_GATEWAY_PORT": str(settings.gateway_port + 10 * index),
        "BITINGLIP_WORKER_PORT": str(settings.worker_port + 10 * index),
        "BITINGLIP_WORKER_ID": f"{settings.worker_host}:{settings.worker_port + 10 * index}",
    }


def child_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, **settings.prefect_env(), "BITINGLIP_PROJECT_DIR": str(PROJECT_DIR)}
    env["BITINGLIP_HOME"] = str(settings.home_dir)
    env["PYTHONUNBUFFERED"] = "1"
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


def run_platform(settings: Settings, console: Console, install: bool = True, replicas: int = 1) -> int:
    started = time.monotonic()
    ensure_postgres_databases(settings.database_url, settings.prefect_database_url)
    env = child_env(settings)
    env["BITINGLIP_ADMIN_API_KEY"] = local_admin_key(settings)
    sup = Supervisor(settings.home_dir / "logs", env)
    py = sys.executable
    try:
        console.print(f"[bold]BitingLip[/] home: {settings.home_dir}")
        with console.status("starting Prefect server"):
            sup.start(
                "prefect-server",
                [
                    py,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    settings.prefect_host,
                    "--port",
                    str(settings.prefect_port),
                ],
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
                )
                for pool in ("gpu", "cpu"):
                    sup.start(
                        f"pool-worker-{pool}{suffix}",
                        [py, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                        cwd=PROJECT_DIR,
                    )
                sup.start(
                    f"gateway{suffix}", [py, "-m", "bitinglip.cli", "gateway"], PROJECT_DIR, replica_env(settings, i)
                )
            for i in range(replicas):
                sup.wait_http(f"http://{settings.worker_host}:{settings.worker_port + 10 * i}/health", timeout=180)
                sup.wait_http(f"http://{settings.gateway_host}:{settings.gateway_port + 10 * i}/health", timeout=60)
        elapsed = time.monotonic() - started
        console.print(f"[green bold]ready[/] in {elapsed:.1f}s")
        for i in range(replicas):
            url = f"http://{settings.gateway_host}:{settings.gateway_port + 10 * i}"
            console.print(f"  gateway    {url}   (OpenAPI: {url}/docs)")
        console.print(f"  Prefect UI {settings.prefect_ui_url}")
        console.print(f"  logs       {settings.home_dir / 'logs'}")
        console.print(f"  admin key  {settings.admin_key_file}  (send it as Authorization: Bearer ...)")
        console.print("try:")
        console.print(
            f"  curl -s {settings.gateway_url}/api/v1/inference/text -H 'Content-Type: application/json' "
            f'-H "Authorization: Bearer $(cat {settings.admin_key_file})" '
            """-d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"""
            """"max_tokens":32,"temperature":0}'""",
            soft_wrap=True,
        )
        console.print("Ctrl-C stops everything.")
        while True:
            sup.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping...")
        return 0
    except Exception as exc:
        console.print(f"[red bold]platform stopped:[/] {exc}")
        return 1
    finally:
        sup.stop_all()
        console.print("all processes stopped")
