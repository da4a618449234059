"""Batch orchestration costs little: N prompts x 32 new tokens through the deployed batch flow (pool
worker, flow-run process, model load, cached chunk tasks, JSONL in and out) vs a direct in-process loop
calling `model.generate` at the same batch size, in the same run. Target: flow/direct >= 0.85.

    python -m bench.batch [--prompts 512]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import MODEL, running_platform, user_store

TOKENS = 32
BATCH = 8  # the engine's max_batch_size in both paths


def prompts(n: int) -> list[str]:
    subjects = ("baker", "pilot", "robot", "farmer", "painter", "sailor", "doctor", "wizard")
    places = ("a harbour town", "the mountains", "a space station", "an old library")
    return [
        f"Story {i}: a {subjects[i % 8]} in {places[(i // 8) % 4]} found something strange. It began when"
        for i in range(n)
    ]


def direct(texts: list[str]) -> float:
    """items/s of a plain loop over `model.generate` at batch BATCH (left padding, greedy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store = user_store()
    path = store.path(store.resolve(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    started = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        encoded = tokenizer(texts[i : i + BATCH], return_tensors="pt", padding=True)
        with torch.inference_mode():
            model.generate(**encoded, max_new_tokens=TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return len(texts) / (time.perf_counter() - started)


def run(texts: list[str]) -> tuple[float, float, float, dict[str, object]]:
    """(direct items/s, flow items/s end to end, flow items/s inside the run, the run's summary). The
    direct loop runs while the platform is up and idle, so both see the same background."""
    from prefect.deployments import run_deployment

    from bitinglip.prefect_client import prefect_client_settings

    lines = [
        {
            "custom_id": f"p-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": MODEL, "prompt": text, "max_tokens": TOKENS, "temperature": 0},
        }
        for i, text in enumerate(texts)
    ]
    with tempfile.TemporaryDirectory(prefix="bitinglip-batch-bench-") as tmp:
        source = Path(tmp) / "prompts.jsonl"
        source.write_text("".join(json.dumps(line) + "\n" for line in lines))
        env = {"BITINGLIP_MAX_BATCH_SIZE": str(BATCH)}
        with running_platform(env) as platform:
            platform.deploy()
            platform.start_pool_worker("gpu")
            platform.sup.wait_http(f"{platform.settings.worker_url}/health", timeout=300)  # models loaded
            time.sleep(5)  # let start-up settle: both paths then share the same idle background
            direct_rate = direct(texts)
            with prefect_client_settings(platform.settings):
                started = time.perf_counter()
                run = run_deployment(
                    "batch-inference/batch-inference",
                    parameters={"input_path": str(source), "output_path": f"{tmp}/out"},
                    timeout=3600,
                )
                wall = time.perf_counter() - started
                state = run.state  # type: ignore[union-attr]
                assert state is not None and state.is_completed(), state
                summary = state.result()
        outputs = (Path(tmp) / "out" / "prompts" / "output.jsonl").read_text().splitlines()
        assert len(outputs) == len(texts), f"{len(outputs)} outputs for {len(texts)} prompts"
    inner = summary[str(source)]
    return direct_rate, len(texts) / wall, len(texts) / inner["seconds"], inner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=512)
    args = parser.parse_args()
    texts = prompts(args.prompts)
    direct_rate, flow_rate, inner_rate, summary = run(texts)
    print(f"{len(texts)} prompts x {TOKENS} new tokens, batch size {BATCH}")
    print(f"  direct model.generate loop : {direct_rate:6.2f} items/s")
    print(f"  batch flow, end to end     : {flow_rate:6.2f} items/s  (incl. flow-run start and model load)")
    print(f"  batch flow, inside the run : {inner_rate:6.2f} items/s  chunks {summary['chunks']}")
    print(f"ratio flow/direct: end to end {flow_rate / direct_rate:.2f}, in-run {inner_rate / direct_rate:.2f}"
          "  (target >= 0.85)")  # fmt: skip


if __name__ == "__main__":
    main()
