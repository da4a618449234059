"""The CLI against the running platform, as a user runs it (a subprocess with the platform's env)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import EMBEDDING_MODEL
from tests.platform_harness import Platform


def cli(platform: Platform, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", *args],
        env={**platform.sup.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
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
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in shown.stdout and "ready" in shown.stdout  # served as installed
    missing = cli(platform, "models", "rm", "no-such-model")
    assert missing.returncode == 1 and "404" in missing.stdout
    loaded = cli(platform, "models", "rm", "smollm2-135m-instruct")
    assert loaded.returncode == 1 and "409" in loaded.stdout


def test_batch_submit_watch_writes_results_next_to_the_input(platform: Platform, tmp_path: Path) -> None:
    lines = [
        {
            "custom_id": f"w-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": EMBEDDING_MODEL, "input": t},
        }
        for i, t in enumerate(["red", "green", "blue", "yellow", "violet"])
    ]
    source = tmp_path / "colours.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken\n")
    result = cli(platform, "batch", "submit", str(source), "--watch", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed: 5 completed, 1 failed of 6" in result.stdout
    outputs = [json.loads(line) for line in (tmp_path / "colours.output.jsonl").read_text().splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == [f"w-{i}" for i in range(5)]
    errors = (tmp_path / "colours.errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and json.loads(errors[0])["error"]["code"] == "invalid_json"


def test_models_load_unload_and_ps(platform: Platform) -> None:
    unloaded = cli(platform, "models", "unload", EMBEDDING_MODEL)
    assert unloaded.returncode == 0, unloaded.stdout + unloaded.stderr
    assert f"{EMBEDDING_MODEL}@main unloaded from {platform.settings.worker_name}" in unloaded.stdout
    loaded = cli(platform, "models", "load", EMBEDDING_MODEL, "--keep-alive", "10m")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "loaded on" in loaded.stdout and "keep-alive 10m" in loaded.stdout
    shown = cli(platform, "ps")
    assert shown.returncode == 0, shown.stderr
    for expected in (platform.settings.worker_name, f"{EMBEDDING_MODEL}@main", "smollm2-135m-instruct@q4_1", "MB"):
        assert expected in shown.stdout
    assert "(keep-alive 10m)" in shown.stdout and "no budget" in shown.stdout and "0 running" in shown.stdout
    forever = cli(platform, "models", "load", EMBEDDING_MODEL, "--keep-alive=-1")  # as the session found it
    assert forever.returncode == 0 and "keep-alive forever" in forever.stdout
    hostile = cli(platform, "models", "load", EMBEDDING_MODEL, "--keep-alive=-5m")
    assert hostile.returncode == 1 and "400" in hostile.stdout and "keep_alive" in hostile.stdout
