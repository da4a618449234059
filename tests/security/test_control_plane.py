"""The control plane as an attacker on the same host sees it: the Prefect API (which runs commands
through work-pool deployments) answers nobody without the auth string, refuses cross-origin browsers
and unsigned state changes, and no caller can choose the command, working directory or environment of
a flow run; the model worker's internal API needs the worker token; everything binds loopback."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from tests.platform_harness import Platform
from tests.security.conftest import envelope

EVIL_ORIGIN = "http://evil.example"


def _prefect(platform: Platform, auth: bool = True, **headers: str) -> httpx.Client:
    if auth:
        token = base64.b64encode(platform.settings.secret("prefect_auth_string").encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return httpx.Client(base_url=platform.settings.prefect_api, headers=headers, timeout=30)


def _csrf(client: httpx.Client) -> dict[str, str]:
    """What Prefect's own client sends with a state change: a token fetched for a client id."""
    client_id = uuid.uuid4().hex
    token = client.get("/csrf-token", params={"client": client_id}).json()["token"]
    return {"Prefect-Csrf-Token": token, "Prefect-Csrf-Client": client_id}


def _deployment_id(platform: Platform, name: str = "batch-inference/batch-inference") -> str:
    return str(_prefect(platform).get(f"/deployments/name/{name}").json()["id"])


def test_prefect_api_needs_the_auth_string(platform: Platform) -> None:
    anonymous = _prefect(platform, auth=False)
    deployment = _deployment_id(platform)
    attempts = [
        ("POST", "/deployments/filter", {}),
        ("POST", "/flow_runs/filter", {}),
        ("POST", "/logs/filter", {}),
        ("GET", f"/deployments/{deployment}", None),
        ("POST", f"/deployments/{deployment}/create_flow_run", {"job_variables": {"command": "touch /tmp/pwned"}}),
        ("POST", "/work_pools/filter", {}),
        ("GET", "/csrf-token?client=x", None),
    ]
    for method, path, body in attempts:
        response = anonymous.request(method, path, json=body)
        # 403 when Prefect's CSRF check runs first (no token can be had without the auth string)
        assert response.status_code in (401, 403), (method, path, response.status_code)
        assert deployment not in response.text
    wrong = base64.b64encode(b"bitinglip:guess").decode()
    assert anonymous.get("/csrf-token?client=x", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    assert anonymous.get("/health").status_code == 200  # probes stay open, and say nothing


def test_no_caller_can_choose_the_command_or_environment_of_a_flow_run(platform: Platform, tmp_path: Path) -> None:
    """Even with the auth string, job variables are limited to the validated ones in work-pools/*.json."""
    client = _prefect(platform)
    marker = tmp_path / "pwned"
    parameters = {"batch-inference/batch-inference": {}, "download-model/download-model": {"name": "tiny-sd-test"}}
    for name, params in parameters.items():
        deployment = _deployment_id(platform, name)
        for variables in (
            {"command": f"touch {marker}"},
            {"env": {"PYTHONSTARTUP": str(marker), "LD_PRELOAD": "/tmp/evil.so"}},
            {"env.LD_PRELOAD": "/tmp/evil.so"},
            {"working_dir": "/"},
            {"device": "cpu; touch /tmp/pwned"},
            {"hf_hub_offline": "0 && id"},
        ):
            response = client.post(
                f"/deployments/{deployment}/create_flow_run",
                json={"job_variables": variables, "parameters": params},
                headers=_csrf(client),
            )
            assert response.status_code == 422, (name, variables, response.status_code, response.text)
    assert not marker.exists()


def test_prefect_refuses_cross_origin_browsers_and_unsigned_changes(platform: Platform) -> None:
    client = _prefect(platform)
    preflight = client.options(
        "/flow_runs/filter",
        headers={"Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers.get("access-control-allow-origin") not in (EVIL_ORIGIN, "*")
    from_page = client.post("/flow_runs/filter", json={}, headers={"Origin": EVIL_ORIGIN})
    assert from_page.headers.get("access-control-allow-origin") not in (EVIL_ORIGIN, "*")
    ui = platform.settings.prefect_ui_url
    own = client.options("/flow_runs/filter", headers={"Origin": ui, "Access-Control-Request-Method": "POST"})
    assert own.headers.get("access-control-allow-origin") == ui
    # A state change without a CSRF token is refused even with the auth string (a page that learned
    # it cannot drive the API from the browser).
    deployment = _deployment_id(platform)
    unsigned = client.post(f"/deployments/{deployment}/create_flow_run", json={"job_variables": {}})
    assert unsigned.status_code == 403, unsigned.text


def test_model_worker_internal_api_needs_the_worker_token(platform: Platform) -> None:
    worker = platform.settings.worker_url
    text = {"model": "smollm2-135m-instruct", "prompt": "Hi", "max_tokens": 2, "priority": 0}
    calls = [
        ("POST", "/internal/v1/text", text),
        ("POST", "/internal/v1/text", {**text, "stream": True}),
        ("POST", "/internal/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["x"], "priority": 0}),
        ("POST", "/internal/v1/images", {"model": "tiny-sd-test", "prompt": "x", "priority": 0}),
        ("GET", "/metrics/", None),
    ]
    for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": f"Bearer {platform.admin_key}"}):
        for method, path, body in calls:
            response = httpx.request(method, f"{worker}{path}", json=body, headers=headers, timeout=30)
            assert envelope(response, 401, "authentication_error")["code"] == "invalid_worker_token", path
    assert httpx.get(f"{worker}/health", timeout=10).status_code == 200
    ok = httpx.post(f"{worker}/internal/v1/text", json=text, headers=platform.worker_auth, timeout=60)
    assert ok.status_code == 200, ok.text


def test_every_port_binds_loopback(platform: Platform) -> None:
    ports = {platform.settings.gateway_port, platform.settings.worker_port, platform.settings.prefect_port}
    try:
        listening = {c.laddr for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    except psutil.AccessDenied:
        pytest.skip("this machine does not let us list sockets")
    ours = {addr for addr in listening if addr.port in ports}
    assert {addr.port for addr in ours} == ports
    assert all(addr.ip == "127.0.0.1" for addr in ours), ours
