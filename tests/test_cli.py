"""The CLI against the running platform, as a user runs it (a subprocess with the platform's env)."""

from __future__ import annotations

import subprocess
import sys

from tests.platform_harness import Platform


def cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", *args],
        env={**platform.sup.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_shows_every_component(platform: Platform) -> None:
    result = cli(platform, "status")
    assert result.returncode == 0, result.stderr
    for expected in ("gateway", "prefect", "worker", platform.settings.gateway_url, "smollm2-135m-instruct@q4_1"):
        assert expected in result.stdout
    assert "down" not in result.stdout


def test_models_show_and_errors(platform: Platform) -> None:
    shown = cli(platform, "models", "show", "smollm2-135m-instruct")
    assert shown.returncode == 0, shown.stderr
    assert "model.safetensors" in shown.stdout and "ready" in shown.stdout
    missing = cli(platform, "models", "rm", "no-such-model")
    assert missing.returncode == 1 and "404" in missing.stdout
    loaded = cli(platform, "models", "rm", "smollm2-135m-instruct")
    assert loaded.returncode == 1 and "409" in loaded.stdout
