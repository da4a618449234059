"""What grammar-constrained decoding costs (response_format, tools): tokens/s of constrained against
unconstrained generation on the same prompts, in the same run, on both text engines (SmolLM2's GGUF on
llama.cpp, the same weights converted for transformers), in-process through each engine's batch loop.

Fair by construction: each constrained reply (a JSON object following a schema, 4 sampled rows in a
batch) is generated first, then the same prompt unconstrained with `ignore_eos` and `max_tokens` set to
that reply's length, so both sides generate exactly the same number of tokens per row. The two sides of
a round run back to back, in alternating order; the ratio is the median of the rounds' ratios (the box
is shared: a load spike hits a pair, not a side). Target: constrained >= 0.9x unconstrained."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.engines import BACKENDS, install_both
from bitinglip.engines.batcher import BatchKnobs
from bitinglip.engines.pool import ENGINES
from bitinglip.engines.protocol import Placement, TextGenerator
from bitinglip.engines.types import SamplingParams, TextRequest, TextResult
from bitinglip.schemas import TextGenerationParams

ROWS = 4
ROUNDS = 6
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "country": {"type": "string"},
        "founded": {"type": "integer", "minimum": -1000, "maximum": 2100},
        "landmarks": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    },
    "required": ["name", "country", "founded", "landmarks"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
CITIES = ["Paris", "Rome", "Tokyo", "Cairo"]


def prompts(engine: TextGenerator) -> list[tuple[list[int], Any]]:
    """Each city's chat prompt and its compiled grammar."""
    out = []
    for city in CITIES[:ROWS]:
        params = TextGenerationParams(
            messages=[{"role": "user", "content": f"Describe {city} as JSON."}],  # type: ignore[list-item]
            response_format=FORMAT,  # type: ignore[arg-type]
        )
        grammar = params.grammar()
        assert grammar is not None
        out.append((engine.encode(None, params.template_messages()), engine.constraint(grammar)))
    return out


def timed(engine: Any, requests: list[TextRequest]) -> tuple[float, list[TextResult]]:
    engine.reset()
    started = time.perf_counter()
    results = engine.run_batch(requests)
    assert all(isinstance(r, TextResult) for r in results), results
    return time.perf_counter() - started, results


def measure(engine: Any) -> tuple[float, float, float, int]:
    """Median tokens/s constrained and unconstrained, the median of each round's ratio (the two sides
    of a round run back to back, in alternating order, so load from other processes hits both), and
    the tokens per round."""
    rows = prompts(engine)
    timed(engine, [TextRequest(ids, SamplingParams(max_tokens=8, temperature=0)) for ids, _ in rows])  # warm-up
    constrained: list[float] = []
    free: list[float] = []
    tokens = 0
    for r in range(ROUNDS):
        sampling = [SamplingParams(max_tokens=160, temperature=0.7, seed=r * ROWS + i) for i in range(ROWS)]
        held = [TextRequest(ids, s, constraint=c) for (ids, c), s in zip(rows, sampling, strict=True)]
        if r % 2:  # the free side first: its lengths are the constrained side's, known from a dry run
            lengths = [res.completion_tokens for res in timed(engine, held)[1]]
            held = [TextRequest(ids, s, constraint=c) for (ids, c), s in zip(rows, sampling, strict=True)]
        else:
            seconds, results = timed(engine, held)
            lengths = [res.completion_tokens for res in results]
            constrained.append(sum(lengths) / seconds)
        same = [
            TextRequest(ids, SamplingParams(max_tokens=n, temperature=0.7, seed=s.seed, ignore_eos=True))
            for (ids, _), s, n in zip(rows, sampling, lengths, strict=True)
        ]
        seconds, results = timed(engine, same)
        assert [res.completion_tokens for res in results] == lengths
        tokens = sum(lengths)
        free.append(tokens / seconds)
        if r % 2:
            seconds, results = timed(engine, held)  # seeded: the same replies again, near enough
            constrained.append(sum(res.completion_tokens for res in results) / seconds)
    ratios = [on / off for on, off in zip(constrained, free, strict=True)]
    return statistics.median(constrained), statistics.median(free), statistics.median(ratios), tokens


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-store-") as root:
        store = install_both(Path(root))
        figures = {}
        for backend, name in BACKENDS.items():
            manifest = store.resolve(name)
            engine = ENGINES[("text", manifest.backend)](
                manifest.id, store.path(manifest), Placement("cpu", torch.float32, threads=2, kv_tokens=4096)
            )
            engine.make_batcher(None, BatchKnobs(ROWS, 0, 16, continuous=False), None)  # type: ignore[arg-type]
            figures[backend] = measure(engine)
            engine.unload()
    print(f"SmolLM2-135M, {ROWS} rows a batch, JSON Schema replies against as many tokens unconstrained:")
    for backend, (on, off, ratio, tokens) in figures.items():
        figure = f"constrained {on:6.1f} tok/s, unconstrained {off:6.1f} tok/s: paired ratio {ratio:4.2f}x"
        print(f"  {backend:<12} {figure} ({tokens} tokens a round)")


if __name__ == "__main__":
    main()
