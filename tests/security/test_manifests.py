"""What ships in the repository for others to run: no manifest publishes Prefect or a model worker, every
Prefect process carries the auth string, and no work-pool template lets a caller pick what runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted([*(ROOT / "work-pools").glob("*.json"), *(ROOT / "deploy" / "kubernetes").glob("*.json")])
# Variables that choose the code, the interpreter's environment or the container a flow run gets.
DANGEROUS = {"command", "env", "working_dir", "image", "service_account_name", "cluster_config", "args"}


def _placeholders(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_placeholders(v) for v in node)) if node else set()
    if isinstance(node, str) and node.startswith("{{") and node.endswith("}}"):
        return {node.strip("{} ")}
    return set()


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_work_pool_templates_expose_only_validated_variables(path: Path) -> None:
    template = json.loads(path.read_text())
    variables = template["variables"]
    assert variables.get("additionalProperties") is False, "unknown job variables must be refused"
    assert not DANGEROUS & set(variables["properties"]), DANGEROUS & set(variables["properties"])
    assert not DANGEROUS & _placeholders(template["job_configuration"])
    for name, schema in variables["properties"].items():
        if schema.get("type") == "string":
            assert "pattern" in schema or "enum" in schema, f"{name}: free text reaches the flow run"


def test_compose_publishes_only_the_gateway_and_authenticates_prefect() -> None:
    services = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"gateway"}, published
    server = services["prefect-server"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"] and server["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] == "true"
    assert server.get("PREFECT_SERVER_CORS_ALLOWED_ORIGINS", "*") != "*"
    for name, service in services.items():
        env = service.get("environment", {})
        if name.startswith("pool-worker"):
            assert env["PREFECT_API_AUTH_STRING"] == server["PREFECT_SERVER_API_AUTH_STRING"], name
            # a pool the worker creates gets our template, not Prefect's default (which opens command/env)
            pool = service["command"].split("--pool ")[1].split()[0]
            assert f"--base-job-template work-pools/{pool}.json" in service["command"], name
        if any(k.startswith("BITINGLIP_") for k in env):
            assert "BITINGLIP_WORKER_TOKEN" in env and "BITINGLIP_PREFECT_AUTH_STRING" in env, name
            assert "change-me" not in json.dumps(env), name
            assert all(":?" in v for k, v in env.items() if "${" in str(v)), f"{name}: a secret may be left empty"
