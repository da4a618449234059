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
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: settings.prefect_api}), get_client(sync_client=True) as client:
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


def run_platform(settings: Settings, console: Console, install: bool = True) -> int:
    started = time.monotonic()
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
        with console.status("starting model worker, pool workers and gateway"):
            sup.start("model-worker", [py, "-m", "bitinglip.cli", "worker"], cwd=PROJECT_DIR)
            for pool in ("gpu", "cpu"):
                sup.start(
                    f"pool-worker-{pool}",
                    [py, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                    cwd=PROJECT_DIR,
                )
            sup.start("gateway", [py, "-m", "bitinglip.cli", "gateway"], cwd=PROJECT_DIR)
            sup.wait_http(f"{settings.worker_url}/health", timeout=120)
            sup.wait_http(f"{settings.gateway_url}/health", timeout=60)
        elapsed = time.monotonic() - started
        console.print(f"[green bold]ready[/] in {elapsed:.1f}s")
        console.print(f"  gateway    {settings.gateway_url}   (OpenAPI: {settings.gateway_url}/docs)")
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
