"""The import direction the architecture promises (docs/architecture.md §5), checked in fresh
interpreters: the gateway, built and all, loads no model library; the engines load nothing of the
gateway, the flows or Prefect."""

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
