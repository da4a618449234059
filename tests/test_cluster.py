"""Cluster mode against the machine's real PostgreSQL and Redis: two gateways, two model workers, pool
workers on Prefect-on-PostgreSQL with Redis messaging, results on S3. Each fault is a test: a model
worker, a gateway replica and a pool worker killed mid-work, the Prefect server restarted, PostgreSQL
cut off from a gateway. Nothing is lost, nothing stays `running`, nothing runs twice to completion."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster_harness import Cluster, ClusterResources
from tests.conftest import BATCH_LIMITS, S3Server, home_with_store
from tests.platform_harness import platform_settings
from tests.tcp_proxy import TcpProxy
from tests.test_batches import chat_line, jsonl
from tests.test_jobs import prefect_task_run_state, wait_done

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_MODELS = '["smollm2-135m-instruct", "all-minilm-l6-v2"]'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store: Any, s3_server: S3Server) -> Iterator[Cluster]:
    resources = ClusterResources()
    resources.create()
    home = home_with_store(tmp_path_factory.mktemp("cluster"), model_store)
    settings = platform_settings(home)
    env = {**s3_server.env, **BATCH_LIMITS, **resources.env(), "BITINGLIP_WORKER_MODELS": CLUSTER_MODELS}
    env["BITINGLIP_RESULTS_URL"] = f"s3://{s3_server.bucket}/cluster-{resources.tag}"
    cluster_fields = {
        "database_url": env["BITINGLIP_DATABASE_URL"],
        "prefect_database_url": env["BITINGLIP_PREFECT_DATABASE_URL"],
        "prefect_redis_url": resources.redis_url,
        "redis_url": resources.redis_url,
    }
    running = Cluster(settings.model_copy(update=cluster_fields), env_overrides=env)
    running.resources = resources  # type: ignore[attr-defined]
    try:
        running.start_cluster()
        yield running
    finally:
        running.close()
        resources.drop()


def submit_text(client: httpx.Client, i: int, max_tokens: int = 8) -> str:
    response = client.post(
        "/api/v1/tasks",
        json={"params": {"prompt": f"Count from {i}:", "max_tokens": max_tokens, "temperature": 0, "raw": True}},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_deploy_files_match_the_code() -> None:
    """deploy/ is not run here; parse it and check it against the settings and pools it names."""
    from bitinglip.config import Settings

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "minio", "prefect-server", "gateway", "model-worker", "pool-worker-gpu"} <= set(
        services
    )
    known = {f"BITINGLIP_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        for var in service.get("environment", {}):
            if var.startswith("BITINGLIP_"):
                assert var in known, f"{name}: {var} is not a setting"
    assert services["gateway"]["deploy"]["replicas"] >= 2
    pools = {p.stem for p in (ROOT / "work-pools").glob("*.json")}
    k8s = __import__("json").loads((ROOT / "deploy" / "kubernetes" / "gpu-pool.json").read_text())
    assert "job_configuration" in k8s and "variables" in k8s
    assert "nvidia.com/gpu" in (ROOT / "deploy" / "kubernetes" / "gpu-pool.json").read_text()
    assert "gpu" in pools
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in prefect_yaml["deployments"]}
    assert deployments["batch-inference"]["work_pool"]["name"] == "gpu"
    nightly = deployments["nightly-batch"]
    assert nightly["schedules"][0]["cron"] and "{date}" in nightly["parameters"]["output_path"]
    assert all((ROOT / d["entrypoint"].split(":")[0]).exists() for d in deployments.values())


def test_two_of_each_and_routing_by_affinity(cluster: Cluster) -> None:
    client = cluster.client()
    workers = client.get("/api/v1/workers").json()["model_workers"]
    assert sorted(w["id"] for w in workers if w["healthy"]) == ["model-worker-1", "model-worker-2"]
    pools = client.get("/api/v1/workers").json()["pool_workers"]
    assert sum(1 for w in pools if w["pool"] == "gpu") >= 2
    served = set()
    for url in cluster.gateway_urls.values():  # both replicas serve, from the one PostgreSQL
        with cluster.client() as c:
            reply = c.post(f"{url}/api/v1/inference/text", json={"prompt": "Hi", "max_tokens": 2})
            assert reply.status_code == 200, reply.text
            served.add(reply.json()["worker"])
    assert served <= {"model-worker-1", "model-worker-2"}


def test_killed_model_worker_jobs_finish_on_the_other(cluster: Cluster) -> None:
    client = cluster.client()
    jobs = [submit_text(client, i, max_tokens=24) for i in range(12)]
    deadline = time.monotonic() + 60
    while True:  # wait until one worker is running some of them
        running = [j for j in (client.get(f"/api/v1/tasks/{i}").json() for i in jobs) if j["status"] == "running"]
        if running:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    victim = running[0]["worker"]
    cluster.kill_group(victim)
    killed_at = time.monotonic()
    final = [wait_done(client, j, timeout=180)[0] for j in jobs]
    assert [j["status"] for j in final] == ["completed"] * len(jobs)  # none lost, none stuck
    assert all(j["attempts"] <= 2 for j in final)
    survivor = "model-worker-2" if victim == "model-worker-1" else "model-worker-1"
    retried = [j for j in final if j["attempts"] == 2]
    assert retried and all(j["worker"] == survivor for j in retried)
    assert time.monotonic() - killed_at < 120
    workers = {w["id"]: w for w in client.get("/api/v1/workers").json()["model_workers"]}
    assert workers[victim]["healthy"] is False  # drained: no traffic goes there
    for _ in range(3):
        assert client.post("/api/v1/inference/text", json={"prompt": "x", "max_tokens": 1}).json()["worker"] == survivor


def test_killed_gateway_replica_loses_no_accepted_job(cluster: Cluster) -> None:
    extra = cluster.start_replica_gateway("gateway-3")
    accepted: list[str] = []
    failures_on_survivor: list[str] = []
    stop = threading.Event()

    def traffic(url: str, record_failures: bool) -> None:
        with cluster.client() as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = c.post(f"{url}/api/v1/tasks", json={"params": {"prompt": f"n{i}", "max_tokens": 1}})
                    if r.status_code == 202:
                        accepted.append(r.json()["id"])
                    elif record_failures:
                        failures_on_survivor.append(f"{r.status_code} {r.text[:200]}")
                    s = c.post(f"{url}/api/v1/inference/text", json={"prompt": "hi", "max_tokens": 1})
                    if record_failures and s.status_code != 200:
                        failures_on_survivor.append(f"sync {s.status_code} {s.text[:200]}")
                except httpx.HTTPError as exc:
                    if record_failures:
                        failures_on_survivor.append(repr(exc))

    threads = [
        threading.Thread(target=traffic, args=(extra, False)),
        threading.Thread(target=traffic, args=(cluster.gateway_urls["gateway-1"], True)),
    ]
    for t in threads:
        t.start()
    time.sleep(4)
    cluster.kill_group("gateway-3")
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join(60)
    assert not failures_on_survivor, failures_on_survivor[:5]
    client = cluster.client()
    assert len(accepted) > 4
    final = [wait_done(client, j, timeout=180)[0] for j in accepted]
    assert {j["status"] for j in final} == {"completed"}  # every accepted job exists and finishes


def test_prefect_restart_with_queued_jobs(cluster: Cluster) -> None:
    client = cluster.client()
    cluster.stop("prefect-server")
    try:
        jobs = [submit_text(client, i, max_tokens=2) for i in range(5)]  # accepted while Prefect is down
        time.sleep(2)  # a worker without a flow run open claims nothing now; one with a flow run open runs them
        assert {client.get(f"/api/v1/tasks/{j}").json()["status"] for j in jobs} <= {"queued", "running", "completed"}
    finally:
        cluster.start_prefect()
    final = [wait_done(client, j, timeout=180)[0] for j in jobs]
    assert [j["status"] for j in final] == ["completed"] * 5 and all(j["attempts"] == 1 for j in final)
    for job in final:  # each has its task run in Prefect, replayed or recorded after the restart
        assert prefect_task_run_state(cluster, job["prefect_run_id"]) == "COMPLETED"


def test_killed_pool_worker_batch_resumes_on_the_other(cluster: Cluster) -> None:
    sdk = cluster.sdk()
    lines = [chat_line(f"p-{i}", f"Name a colour, number {i}.", max_tokens=12) for i in range(40)]
    upload = sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    client = cluster.client()
    deadline = time.monotonic() + 240
    while (job := client.get(f"/api/v1/tasks/{batch.id}").json())["progress"] is None or job["progress"].get(
        "chunks", {}
    ).get("done", 0) < 2:
        assert time.monotonic() < deadline, str(job)[:500]
        time.sleep(0.3)
    done_at_kill = job["progress"]["chunks"]["done"]
    holder = _pool_worker_running(cluster, job["worker"].removeprefix("flow-run:"))
    cluster.kill_group(holder)
    deadline = time.monotonic() + 300
    while (job := client.get(f"/api/v1/tasks/{batch.id}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, str(job)[:500]
        time.sleep(0.5)
    assert job["status"] == "completed", str(job)[:500]
    assert job["attempts"] == 2 and job["result"]["chunks"]["cached"] >= done_at_kill
    outputs = sdk.files.content(job["result"]["output_file_id"]).text.splitlines()
    assert len(outputs) == 40


def _pool_worker_running(cluster: Cluster, flow_run_id: str) -> str:
    import psutil

    for name in ("pool-worker-gpu-1", "pool-worker-gpu-2"):
        leader = psutil.Process(cluster.children[name].process.pid)
        for child in leader.children(recursive=True):
            try:
                if child.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                    return name
            except psutil.Error:
                continue
    raise AssertionError(f"no pool worker runs {flow_run_id}")


def test_postgres_cut_off_gives_503_then_recovers(cluster: Cluster) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    resources: ClusterResources = cluster.resources  # type: ignore[attr-defined]
    url = cluster.start_replica_gateway("gateway-pg-proxy", resources.env(f"127.0.0.1:{proxy.port}"))
    try:
        with cluster.client() as c:
            assert c.get(f"{url}/api/v1/tasks").status_code == 200
            proxy.cut()
            cut = c.get(f"{url}/api/v1/tasks")
            assert cut.status_code == 503, cut.text[:300]
            assert cut.json()["error"]["type"] == "service_unavailable" and int(cut.headers["Retry-After"]) >= 1
            proxy.start()
            deadline = time.monotonic() + 30
            while (again := c.get(f"{url}/api/v1/tasks")).status_code != 200:
                assert time.monotonic() < deadline, again.text[:300]
                time.sleep(0.5)
            assert c.post(f"{url}/api/v1/inference/text", json={"prompt": "ok", "max_tokens": 1}).status_code == 200
    finally:
        proxy.cut()
        cluster.stop("gateway-pg-proxy")
