"""Metrics with the ecosystem's names: values match what was sent, the dashboard only queries what
is exported, and a real Prometheus server scrapes the platform with deploy/prometheus.yml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.platform_harness import Platform, free_port

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """`name{labels}` -> value, for every sample of a /metrics page."""
    text = httpx.get(f"{url}/metrics/", timeout=10, headers=headers, follow_redirects=True).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for k, v in samples.items() if k.split("{")[0] == name and all(w in k for w in want))


def test_metric_values_match_what_was_sent(platform: Platform) -> None:
    client = platform.client()
    gateway, worker = platform.gateway, platform.settings.worker_url
    before_gw, before_w = scrape(gateway, platform.auth), scrape(worker, platform.worker_auth)
    usage = [
        client.post("/api/v1/inference/text", json={"prompt": f"Count {i}:", "max_tokens": 5}).json()["usage"]
        for i in range(3)
    ]
    assert client.post("/api/v1/inference/text", json={"model": "nope", "prompt": "x"}).status_code == 404
    after_gw, after_w = scrape(gateway, platform.auth), scrape(worker, platform.worker_auth)
    route = "/api/v1/inference/text"
    sent_ok = total(after_gw, "bitinglip_gateway_requests_total", route=route, status="200") - total(
        before_gw, "bitinglip_gateway_requests_total", route=route, status="200"
    )
    sent_404 = total(after_gw, "bitinglip_gateway_requests_total", route=route, status="404") - total(
        before_gw, "bitinglip_gateway_requests_total", route=route, status="404"
    )
    assert (sent_ok, sent_404) == (3, 1)
    model = "smollm2-135m-instruct@q4_1"
    generated = total(after_w, "bitinglip_generation_tokens_total", model=model) - total(
        before_w, "bitinglip_generation_tokens_total", model=model
    )
    prompt = total(after_w, "bitinglip_prompt_tokens_total", model=model) - total(
        before_w, "bitinglip_prompt_tokens_total", model=model
    )
    assert generated == sum(u["completion_tokens"] for u in usage)
    assert prompt == sum(u["prompt_tokens"] for u in usage)
    ttft = total(after_w, "bitinglip_time_to_first_token_seconds_count", model=model) - total(
        before_w, "bitinglip_time_to_first_token_seconds_count", model=model
    )
    assert ttft == 3
    assert total(after_w, "bitinglip_models_loaded") == 3


def test_request_id_is_echoed_and_generated(platform: Platform) -> None:
    client = platform.client()
    mine = client.post(
        "/api/v1/inference/text", json={"prompt": "Hi", "max_tokens": 2}, headers={"X-Request-ID": "req-abc-123"}
    )
    assert mine.headers["x-request-id"] == "req-abc-123"
    made = client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    logs = platform.settings.home_dir / "logs"
    deadline = time.monotonic() + 10  # log lines are written by a writer thread, a moment later
    while True:
        worker_log, gateway_log = (logs / "model-worker.log").read_text(), (logs / "gateway.log").read_text()
        if ("req-abc-123" in gateway_log and "req-abc-123" in worker_log) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "req-abc-123" in gateway_log and "req-abc-123" in worker_log  # forwarded to the worker


def test_json_summary_and_workers_view(platform: Platform) -> None:
    client = platform.client()
    for _ in range(3):
        client.post("/api/v1/inference/text", json={"prompt": "Hi", "max_tokens": 2})
    summary = client.get("/api/v1/metrics").json()
    assert summary["gateway"]["requests_per_s"] > 0 and summary["gateway"]["p95_ms"] > 0
    assert summary["gateway"]["routes"]["/api/v1/inference/text"]["p50_ms"] > 0
    (worker,) = summary["workers"]
    assert "smollm2-135m-instruct@q4_1" in worker["models"]
    workers = client.get("/api/v1/workers").json()
    assert workers["model_workers"][0]["healthy"] is True
    assert {"gpu", "cpu"} >= {w["pool"] for w in workers["pool_workers"]}
    assert any(w["pool"] == "cpu" for w in workers["pool_workers"])


def test_dashboard_queries_only_exported_metrics(platform: Platform) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "bitinglip.json").read_text())
    queried = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"bitinglip_[a-z_]+", target["expr"])
    }
    exported_text = (
        httpx.get(f"{platform.gateway}/metrics", headers=platform.auth).text
        + httpx.get(f"{platform.settings.worker_url}/metrics/", headers=platform.worker_auth).text
    )
    exported = {f.name for f in text_string_to_metric_families(exported_text)}
    exported |= {f"{name}_total" for name in exported}  # counters are exported as NAME_total samples
    assert queried and queried <= exported, queried - exported


def test_real_prometheus_scrapes_gateway_and_worker(platform: Platform, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (.ci/run installs Debian's package)")
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    ports = {"bitinglip-gateway": platform.settings.gateway_port, "bitinglip-worker": platform.settings.worker_port}
    (tmp_path / "bitinglip-gateway").write_text(platform.admin_key)
    (tmp_path / "bitinglip-worker").write_text(platform.settings.secret("worker_token"))
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
        job["authorization"]["credentials_file"] = str(tmp_path / job["job_name"])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prometheus = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = platform.client()
        for _ in range(2):
            assert client.post("/api/v1/inference/text", json={"prompt": "Hello", "max_tokens": 3}).status_code == 200

        def query(expr: str) -> float:
            body = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=5).json()
            result = body["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0

        deadline = time.monotonic() + 60
        while True:
            try:
                requests = query('sum(bitinglip_gateway_requests_total{route="/api/v1/inference/text"})')
                tokens = query("sum(bitinglip_generation_tokens_total)")
                if requests > 0 and tokens > 0:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus never saw the platform's counters"
            time.sleep(1)
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        assert {t["labels"]["job"] for t in targets if t["health"] == "up"} == set(ports)
    finally:
        prometheus.terminate()
        prometheus.wait(10)
