"""The import direction the architecture promises (docs/architecture.md §5), checked in fresh
interpreters: the gateway, built and all, loads no model library (nor the offline runner); the engines
load nothing of the gateway, the flows or Prefect; the library and the flows load nothing of the
gateway at module level (lazy imports inside functions are allowed); the serving layer loads no model
library, so the gateway can use it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from bitinglip.platform import PROJECT_DIR

MODEL_LIBRARIES = ("torch", "transformers", "diffusers", "accelerate")


def _modules_after(code: str) -> set[str]:
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_gateway_loads_no_model_library() -> None:
    loaded = _modules_after(
        """
        import tempfile
        from tests.security.conftest import strong_settings
        from api.app import create_app
        create_app(strong_settings(home=tempfile.mkdtemp()))
        """
    )
    assert "api.app" in loaded
    assert not {m.split(".")[0] for m in loaded} & set(MODEL_LIBRARIES)
    assert "bitinglip.serving.serving" in loaded
    assert "bitinglip.serving.offline" not in loaded  # batch flow runs only


def test_engines_load_nothing_of_the_gateway_flows_or_prefect() -> None:
    loaded = _modules_after(
        """
        import pkgutil, importlib, bitinglip.engines
        for info in pkgutil.iter_modules(bitinglip.engines.__path__):
            importlib.import_module(f"bitinglip.engines.{info.name}")
        """
    )
    assert "bitinglip.engines.text" in loaded
    assert not {m.split(".")[0] for m in loaded} & {"api", "flows", "prefect"}


def test_library_and_flows_load_nothing_of_the_gateway() -> None:
    loaded = _modules_after(
        """
        import importlib, pkgutil, bitinglip, flows
        for package in (bitinglip, flows):
            for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
                if not info.name.startswith("bitinglip.db.migrations."):  # alembic scripts, not modules
                    importlib.import_module(info.name)
        """
    )
    assert {"flows.batch", "flows.batch_quota", "bitinglip.serving.offline", "bitinglip.cli"} <= loaded
    assert not {m for m in loaded if m.split(".")[0] == "api"}


def test_serving_loads_no_model_library_nor_gateway_nor_flows() -> None:
    loaded = _modules_after(
        """
        import pkgutil, importlib, bitinglip.serving
        for info in pkgutil.iter_modules(bitinglip.serving.__path__):
            importlib.import_module(f"bitinglip.serving.{info.name}")
        """
    )
    assert {"bitinglip.serving.protocol", "bitinglip.serving.serving", "bitinglip.serving.offline"} <= loaded
    assert not {m.split(".")[0] for m in loaded} & {*MODEL_LIBRARIES, "api", "flows", "prefect"}


def test_worker_command_sets_openmp_spins_before_torch_loads() -> None:
    """libgomp reads GOMP_SPINCOUNT once, when torch loads: the CLI must not load torch before
    `bitinglip worker` sets it, and an operator's own value wins."""
    from bitinglip.cli import short_openmp_spins
    from bitinglip.config import Settings

    assert "torch" not in {m.split(".")[0] for m in _modules_after("import bitinglip.cli")}
    settings = Settings(omp_spin_count=10_000)
    environ: dict[str, str] = {}
    short_openmp_spins(settings, environ)
    assert environ == {"GOMP_SPINCOUNT": "10000"}
    mine = {"GOMP_SPINCOUNT": "300000"}
    short_openmp_spins(settings, mine)
    assert mine == {"GOMP_SPINCOUNT": "300000"}
