"""`bench/gpu_check.py`, the script a lent GPU machine runs, run here on the CPU so it does not rot
between loans: its kit from a real install, then every check. Only `placement` needs a GPU (it asserts
CUDA and bf16); everything else must pass on any device."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import gpu_check


def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    gpu_check.make_kit(kit)
    assert (kit / "text" / "tokenizer.json").exists() and (kit / "embedding" / "vocab.txt").exists()
    assert not [p for p in kit.rglob("*") if p.suffix in (".safetensors", ".gguf", ".bin")]  # no weights travel

    report = gpu_check.Report()
    asyncio.run(gpu_check.run_checks(kit, tmp_path / "run", report, levels=(1, 2), tokens=4))

    outcome = {c["check"]: c["ok"] for c in report.checks}
    assert len(outcome) == 12
    assert [name for name, ok in outcome.items() if not ok] == ["placement"], report.checks
    figures = report.figures["text_tokens_per_s"]
    assert set(figures) == {"1", "2"} and all(row["pool_tok_s"] > 0 for row in figures.values())
