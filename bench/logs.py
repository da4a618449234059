"""Log volume per request at INFO: lines and bytes each component writes for one chat request
(plain and streamed), against the same platform left idle for the same time (heartbeats and
Prefect's own housekeeping are not the request's). JSON logs, so each line's source is counted too:
the noisiest loggers are listed. Target: a few lines per request, not hundreds.

    .venv/bin/python -m bench.logs [REQUESTS]
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from bench.harness import MODEL, running_platform
from tests.platform_harness import Platform

REQUESTS = 20
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}


def snapshot(folder: Path) -> dict[str, int]:
    """Bytes written so far per log file (none is rotated at these sizes)."""
    return {p.stem: p.stat().st_size for p in folder.glob("*.log")}


def written_since(folder: Path, before: dict[str, int]) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for path in folder.glob("*.log"):
        with path.open("rb") as fh:
            fh.seek(before.get(path.stem, 0))
            lines[path.stem] = fh.read().decode("utf-8", "replace").splitlines()
    return lines


def source(line: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        return "(not JSON: printed by a library or C code)"
    return f"{record.get('logger') or record.get('module', '?')}: {str(record.get('event', ''))[:60]}"


def measure(platform: Platform, seconds_or_requests: float, idle: bool) -> tuple[dict[str, list[str]], float]:
    folder = platform.settings.home_dir / "logs"
    time.sleep(1.0)  # let the writer threads flush what came before
    before = snapshot(folder)
    started = time.perf_counter()
    if idle:
        time.sleep(seconds_or_requests)
    else:
        with platform.client(timeout=120) as client:
            for i in range(int(seconds_or_requests)):
                body = {**CHAT, "stream": i % 2 == 1}
                response = client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
    elapsed = time.perf_counter() - started
    time.sleep(1.0)
    return written_since(folder, before), elapsed


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else REQUESTS
    env = {"BITINGLIP_LOG_FORMAT": "json", "BITINGLIP_LOG_LEVEL": "INFO"}
    with running_platform(env) as platform:
        with platform.client(timeout=120) as client:  # warm: the model is loaded, the first-call logs are out
            for _ in range(3):
                assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        busy, elapsed = measure(platform, requests, idle=False)
        quiet, _ = measure(platform, elapsed, idle=True)
    print(f"{requests} chat requests at INFO (half streamed), against {elapsed:.1f}s idle; JSON logs")
    print(f"  {'component':16} {'lines/req':>10} {'bytes/req':>10}   (busy lines, idle lines)")
    total_lines = total_bytes = 0.0
    for name in sorted(set(busy) | set(quiet)):
        lines = len(busy.get(name, [])) - len(quiet.get(name, []))
        size = sum(len(x) + 1 for x in busy.get(name, [])) - sum(len(x) + 1 for x in quiet.get(name, []))
        total_lines += max(0, lines) / requests
        total_bytes += max(0, size) / requests
        print(
            f"  {name:16} {max(0, lines) / requests:10.1f} {max(0, size) / requests:10.0f}   "
            f"({len(busy.get(name, []))}, {len(quiet.get(name, []))})"
        )
    print(f"  {'total':16} {total_lines:10.1f} {total_bytes:10.0f}")
    sources = Counter(source(line) for lines in busy.values() for line in lines)
    idle_sources = Counter(source(line) for lines in quiet.values() for line in lines)
    print("  noisiest sources while busy (count busy - idle):")
    for what, count in (sources - idle_sources).most_common(8):
        print(f"    {count:6d}  {what}")


if __name__ == "__main__":
    main()
