"""The platform in cluster mode on this machine, as `bitinglip up --cluster` runs it: Prefect on the
machine's PostgreSQL with prefect-redis messaging, the gateway DB on PostgreSQL, rate limits in Redis,
results on S3; two gateways, two model workers, two `gpu` pool workers and one `cpu`. Each run creates
and drops its own databases and uses its own Redis database number and key prefix."""

from __future__ import annotations

import random
import sys
import uuid
from dataclasses import dataclass, field

import psycopg
import redis

from bitinglip.platform import PROJECT_DIR, shared_cores_env
from tests.platform_harness import Platform, free_port

POSTGRES = "postgres@127.0.0.1:5432"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@dataclass
class ClusterResources:
    """Per-run PostgreSQL databases and a Redis database, removed afterwards."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    redis_db: int = field(default_factory=lambda: random.randint(1, 15))

    @property
    def gateway_db(self) -> str:
        return f"bl_{self.tag}_gateway"

    @property
    def prefect_db(self) -> str:
        return f"bl_{self.tag}_prefect"

    @property
    def redis_url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}"

    def env(self, database_host: str = "127.0.0.1:5432") -> dict[str, str]:
        return {
            "BITINGLIP_DATABASE_URL": f"postgresql+psycopg://postgres@{database_host}/{self.gateway_db}",
            "BITINGLIP_PREFECT_DATABASE_URL": f"postgresql+asyncpg://{POSTGRES}/{self.prefect_db}",
            "BITINGLIP_PREFECT_REDIS_URL": self.redis_url,
            "BITINGLIP_REDIS_URL": self.redis_url,
            "BITINGLIP_REDIS_PREFIX": f"bitinglip-test-{self.tag}",
        }

    def create(self) -> None:
        with psycopg.connect(f"postgresql://{POSTGRES}/postgres", autocommit=True) as conn:
            for name in (self.gateway_db, self.prefect_db):
                conn.execute(f'CREATE DATABASE "{name}"')
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db).flushdb()

    def drop(self) -> None:
        with psycopg.connect(f"postgresql://{POSTGRES}/postgres", autocommit=True) as conn:
            for name in (self.gateway_db, self.prefect_db):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db).flushdb()


class Cluster(Platform):
    """Children are named `gateway-N`, `model-worker-N`, `pool-worker-gpu-N`, `pool-worker-cpu-1`."""

    gateway_urls: dict[str, str]
    worker_urls: dict[str, str]

    def start_cluster(self) -> None:
        self.gateway_urls, self.worker_urls = {}, {}
        self.start_prefect()
        self.deploy()
        for i in (1, 2):
            self.start_model_worker(f"model-worker-{i}")
        for i in (1, 2):
            self.start_replica_gateway(f"gateway-{i}")
        for name, pool in (("pool-worker-gpu-1", "gpu"), ("pool-worker-gpu-2", "gpu"), ("pool-worker-cpu-1", "cpu")):
            self._start(name, [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"])
        for url in self.worker_urls.values():
            self.sup.wait_http(f"{url}/health", timeout=240)

    def start_model_worker(self, name: str) -> None:
        port = free_port()
        self.worker_urls[name] = f"http://127.0.0.1:{port}"
        env = {"BITINGLIP_WORKER_PORT": str(port), "BITINGLIP_WORKER_ID": name, **shared_cores_env(self.settings, 2)}
        self.children[name] = self.sup.start(name, [sys.executable, "-m", "bitinglip.cli", "worker"], PROJECT_DIR, env)

    def start_replica_gateway(self, name: str, env: dict[str, str] | None = None) -> str:
        self.gateway_urls[name] = self.start_extra_gateway(name, env)
        return self.gateway_urls[name]

    def kill_group(self, name: str) -> None:
        """kill -9 a child and everything it started (a pool worker's flow-run processes too)."""
        import os
        import signal

        child = self.children.pop(name)
        self.sup.children.remove(child)
        os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait(30)

    @property
    def gateway(self) -> str:
        return self.gateway_urls.get("gateway-1") or super().gateway
