"""Real processes for end-to-end tests: Prefect server, model worker and gateway, each a child
process on free ports under a throwaway BITINGLIP_HOME, supervised like `bitinglip up` does."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from pydantic import SecretStr

from bitinglip import prefect_server
from bitinglip.auth.credentials import new_api_key
from bitinglip.config import Settings
from bitinglip.home_secrets import SECRETS
from bitinglip.http import worker_auth_header
from bitinglip.platform import PROJECT_DIR, child_env
from bitinglip.supervisor import Child, Supervisor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Platform:
    settings: Settings
    env_overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        env = child_env(self.settings)
        env.update(
            {
                "BITINGLIP_GATEWAY_PORT": str(self.settings.gateway_port),
                "BITINGLIP_WORKER_PORT": str(self.settings.worker_port),
                "BITINGLIP_PREFECT_PORT": str(self.settings.prefect_port),
                "BITINGLIP_WORKER_HEARTBEAT_S": str(self.settings.worker_heartbeat_s),
                "BITINGLIP_WORKER_STALE_AFTER_S": str(self.settings.worker_stale_after_s),
                "BITINGLIP_JOB_ORPHAN_AFTER_S": str(self.settings.job_orphan_after_s),
                "BITINGLIP_REAPER_INTERVAL_S": str(self.settings.reaper_interval_s),
                "BITINGLIP_JOB_REDISPATCH_AFTER_S": str(self.settings.job_redispatch_after_s),
                "BITINGLIP_CONSOLE_EVENTS_INTERVAL_S": str(self.settings.console_events_interval_s),
                **{f"BITINGLIP_{name.upper()}": self.settings.secret(name) for name in SECRETS},
                "BITINGLIP_ADMIN_API_KEY": self.admin_key,
                "BITINGLIP_API_KEY": self.admin_key,  # what the CLI sends
                "BITINGLIP_RATE_LIMIT_PER_MINUTE": str(self.settings.rate_limit_per_minute),
                **self.env_overrides,
            }
        )
        self.sup = Supervisor(self.settings.home_dir / "logs", env)
        self.children: dict[str, Child] = {}

    @property
    def admin_key(self) -> str:
        assert self.settings.admin_api_key is not None
        return self.settings.admin_api_key.get_secret_value()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    @property
    def worker_auth(self) -> dict[str, str]:
        return worker_auth_header(self.settings.secret("worker_token"))

    @property
    def prefect_auth(self) -> tuple[str, str]:
        """(user, password) of the Prefect server's basic auth."""
        user, _, password = self.settings.secret("prefect_auth_string").partition(":")
        return user, password

    @property
    def gateway(self) -> str:
        return self.settings.gateway_url

    def start_prefect(self) -> None:
        self._start(
            "prefect-server",
            prefect_server.command(self.settings, "127.0.0.1", self.settings.prefect_port),
        )
        self.sup.wait_http(f"{self.settings.prefect_api}/health", timeout=120)

    def start_worker(self, wait: bool = True) -> None:
        self._start("model-worker", [sys.executable, "-m", "bitinglip.cli", "worker"])
        if wait:
            self.sup.wait_http(f"{self.settings.worker_url}/health", timeout=120)

    def start_gateway(self) -> None:
        self._start("gateway", [sys.executable, "-m", "bitinglip.cli", "gateway"])
        self.sup.wait_http(f"{self.gateway}/health", timeout=60, ok=(200, 503))

    def start_extra_gateway(self, name: str, env: dict[str, str] | None = None) -> str:
        """Another gateway replica on its own port (same DB, Prefect and workers); returns its URL."""
        port = free_port()
        self.children[name] = self.sup.start(
            name,
            [sys.executable, "-m", "bitinglip.cli", "gateway"],
            cwd=PROJECT_DIR,
            env={"BITINGLIP_GATEWAY_PORT": str(port), **(env or {})},
        )
        url = f"http://127.0.0.1:{port}"
        self.sup.wait_http(f"{url}/health", timeout=60, ok=(200, 503))
        return url

    def start_extra_worker(self, name: str, env: dict[str, str] | None = None) -> str:
        """Another model worker on its own port (id `name`, same DB and Prefect), preloading nothing
        unless `env` says so; returns its id once its heartbeat is in the registry (stop it with
        `stop(name)`, which deregisters it)."""
        port = free_port()
        self.children[name] = self.sup.start(
            name,
            [sys.executable, "-m", "bitinglip.cli", "worker"],
            cwd=PROJECT_DIR,
            env={"BITINGLIP_WORKER_PORT": str(port), "BITINGLIP_WORKER_ID": name, "BITINGLIP_WORKER_MODELS": "[]"}
            | (env or {}),
        )
        self.sup.wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        deadline = time.monotonic() + 30
        while not any(w["id"] == name for w in self.client().get("/api/v1/workers").json()["model_workers"]):
            assert time.monotonic() < deadline, f"worker {name} never sent a heartbeat"
            time.sleep(0.2)
        return name

    def deploy(self) -> None:
        """Work pools from work-pools/*.json and the deployments in prefect.yaml, as `up` does."""
        from bitinglip.platform import deploy, ensure_work_pools

        ensure_work_pools(self.settings)
        deploy(self.settings, env=self.sup.env)

    def start_pool_worker(self, pool: str) -> None:
        self._start(
            f"pool-worker-{pool}",
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
        )

    def start_all(self, timeout: float = 120) -> None:
        """Everything `up` runs: Prefect, a model worker, the gateway, deployments, both pool workers."""
        self.start_prefect()
        self.start_worker(wait=False)
        self.start_gateway()
        self.deploy()
        self.start_pool_worker("cpu")
        self.start_pool_worker("gpu")
        self.wait_ready(timeout=timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        self.sup.wait_http(f"{self.gateway}/health", timeout=timeout)

    def stop(self, name: str) -> None:
        child = self.children.pop(name)
        self.sup.children.remove(child)
        import signal

        from bitinglip.supervisor import _signal_group

        _signal_group(child.process, signal.SIGTERM)
        try:
            child.process.wait(30)
        except subprocess.TimeoutExpired:  # a Prefect pool worker can sit on SIGTERM (issue #19): end it
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait(10)

    def kill(self, name: str) -> None:
        child = self.children.pop(name)
        self.sup.children.remove(child)
        child.process.kill()
        child.process.wait(30)

    def _start(self, name: str, argv: list[str]) -> None:
        self.children[name] = self.sup.start(name, argv, cwd=PROJECT_DIR)

    def close(self) -> None:
        self.sup.stop_all()

    def client(self, key: str | None = None, timeout: float = 120, **kwargs: object) -> httpx.Client:
        """A client with the admin's key (or `key`); pass key="" for none."""
        headers = {} if key == "" else {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.gateway, timeout=timeout, headers=headers, **kwargs)  # type: ignore[arg-type]

    def sdk(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway}/v1", api_key=key or self.admin_key, max_retries=0, timeout=120)


def platform_settings(home: Path, fast_heartbeat: bool = True) -> Settings:
    """Tests beat fast so restarts are noticed quickly; benchmarks keep the production defaults."""
    beat: dict[str, float] = (
        {
            "worker_heartbeat_s": 0.5,
            "worker_stale_after_s": 3.0,
            "job_orphan_after_s": 4.0,
            "reaper_interval_s": 1.0,
            "job_redispatch_after_s": 8.0,
            "pool_poll_s": 2.0,  # batches and downloads start within 2 s, not 10
            "console_events_interval_s": 0.25,  # the console's live view samples progress often enough to see it move
        }
        if fast_heartbeat
        else {}
    )
    return Settings(
        home=home,
        gateway_port=free_port(),
        worker_port=free_port(),
        prefect_port=free_port(),
        **{name: SecretStr(make()) for name, (_, make) in SECRETS.items()},
        admin_api_key=SecretStr(new_api_key()[0]),
        rate_limit_per_minute=1_000_000,
        **beat,
    )
