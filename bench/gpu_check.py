"""The GPU path, checked where a GPU is. CI and the development boxes have none, so this is the one
script a lent GPU machine runs (`docs/architecture.md` §3.24).

What runs there is the worker's own `ModelPool` with `device=auto`: placement and dtype, the real
installer (`file://`), the transformers text engine under continuous batching, embeddings, the image
pipeline, `device_map=auto` through accelerate, memory accounting, unloading and the memory budget.
The models have the shapes of the defaults (SmolLM2-135M with its own tokenizer and chat template,
MiniLM-L6, tiny-sd) with seeded random weights: the weights cannot travel (the lent machine reaches no
registry or hub), and speed and memory depend on shapes, not values. So answers are checked for
consistency (alone vs batched, seeded reruns), not for facts.

Figure: text tokens/s through the pool at 1/8/32/64 concurrent requests of 128 tokens each, against
`model.generate` on the same model with a batch of the same size, in the same run.

    python -m bench.gpu_check kit DIR   # here: copy the default models' tokenizers and configs (no weights)
    python -m bench.gpu_check run DIR [REPORT.json]   # there: build, install, serve, check; exit 1 if one fails
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

KIT_MODELS = {"text": "smollm2-135m-instruct", "embedding": "all-minilm-l6-v2"}  # catalog names
NOT_WEIGHTS = (".json", ".txt", ".model", ".jinja")
TOKENS = 128
LEVELS = (1, 8, 32, 64)
PROMPTS = [f"Write a long story about {t}." for t in ("the sea", "bread", "the moon", "a robot", "tea", "winter")]


def make_kit(dest: Path) -> None:
    """The default models' tokenizer and config files, taken from a real install (the text model
    converted for transformers), without their weights."""
    from bitinglip.config import Settings
    from bitinglip.models import installer
    from bitinglip.models.catalog import load_catalog
    from bitinglip.models.store import ModelStore

    catalog = load_catalog()
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "models")
        for task, name in KIT_MODELS.items():
            entry = catalog[name]
            manifest = installer.install_from(
                Settings(home=Path(tmp)),
                store,
                entry.source,
                name=name,
                revision=entry.revision,
                task=entry.task,
                backend="transformers",
            )
            out = dest / task
            out.mkdir(parents=True, exist_ok=True)
            for file in manifest.files:
                if file.endswith(NOT_WEIGHTS) and "/" not in file:
                    shutil.copy(store.path(manifest) / file, out / file)
    print(f"kit written to {dest}: {sorted(str(p.relative_to(dest)) for p in dest.rglob('*') if p.is_file())}")


def build_models(kit: Path, root: Path) -> dict[str, Path]:
    """Seeded random weights in the kit's shapes, saved as a model folder each."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from bitinglip.models.builtin import build_tiny_sd

    torch.manual_seed(0)
    folders = {}
    for task, auto in (("text", AutoModelForCausalLM), ("embedding", AutoModel)):
        folder = root / task
        shutil.copytree(kit / task, folder)
        auto.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
        folders[task] = folder
    build_tiny_sd(root / "image")
    folders["image"] = root / "image"
    return folders


class Report:
    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}

    async def check(self, name: str, body: Callable[[], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        try:
            detail = await body()
            ok = True
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
            ok = False
        self.checks.append(
            {"check": name, "ok": ok, "seconds": round(time.perf_counter() - started, 2), "detail": detail}
        )
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        return detail if ok else None


def cuda_mb() -> float:
    import torch

    return torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


async def run_checks(
    kit: Path, root: Path, report: Report, levels: tuple[int, ...] = LEVELS, tokens: int = TOKENS
) -> None:
    """Every check in order, each recorded in `report`; `root` takes the built models and the home."""
    import torch

    from bitinglip.config import Settings
    from bitinglip.engines.pool import ModelPool
    from bitinglip.engines.types import Priority, TextDelta
    from bitinglip.models import installer
    from bitinglip.models.store import ModelStore
    from bitinglip.schemas import ImageParams, TextGenerationParams

    report.figures["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (dry run)"
    folders = build_models(kit, root / "built")
    # rows per batch up to the largest level (the default, 8, suits a CPU)
    settings = Settings(home=root / "home", model_source_roots=[root / "built"], max_batch_size=max(levels))
    store = ModelStore(settings.home / "models")
    ids = {}
    for task, folder in folders.items():
        manifest = installer.install_from(
            settings,
            store,
            f"file://{folder}",
            name=f"gpu-{task}",
            revision="v1",
            task=task,  # type: ignore[arg-type]
        )
        ids[task] = manifest.id
    pool = ModelPool(settings, store)

    def text(prompt: str, **kw: Any) -> TextGenerationParams:
        return TextGenerationParams(model=ids["text"], messages=[{"role": "user", "content": prompt}], **kw)

    async def placement() -> str:
        assert pool.device == "cuda" and pool.dtype == torch.bfloat16, (pool.device, pool.dtype)
        return f"{pool.device} {pool.dtype}"

    async def load_and_memory() -> dict[str, float]:
        before = cuda_mb()
        loaded = await pool.load(ids["text"])
        after = cuda_mb()
        params = next(loaded.engine.model.parameters())  # type: ignore[attr-defined]
        assert params.device.type == torch.device(pool.device).type and params.dtype == pool.dtype, params
        reported = loaded.memory_bytes / 2**20
        if torch.cuda.is_available():  # what the engine reports is what the allocator gave it
            assert abs((after - before) - reported) < 0.1 * reported + 8, (before, after, reported)
        return {
            "reported_mb": round(reported, 1),
            "cuda_allocated_delta_mb": round(after - before, 1),
            "load_s": round(loaded.load_seconds, 2),
        }

    async def greedy_alone_vs_batched() -> str:
        ask = text("Which city is the capital of France?", max_tokens=24, temperature=0)
        alone = (await pool.generate_text(ask, Priority.SYNC)).text
        others = [text(p, max_tokens=40, temperature=0.8, seed=i) for i, p in enumerate(PROMPTS)]
        together = await asyncio.gather(*(pool.generate_text(p, Priority.SYNC) for p in [*others, ask]))
        same = together[-1].text == alone
        return f"batch of {together[-1].batch_size}: {'same text' if same else 'differs (bf16 batch shapes)'}"

    async def seeded_reproducible() -> str:
        ask = text("Tell me a story.", max_tokens=32, temperature=1.0, top_p=0.9, seed=7)
        first = (await pool.generate_text(ask, Priority.SYNC)).text
        noise = [pool.generate_text(text(p, max_tokens=32, temperature=0), Priority.SYNC) for p in PROMPTS]
        results = await asyncio.gather(pool.generate_text(ask, Priority.SYNC), *noise)
        assert results[0].text == first, (first, results[0].text)
        return "same seeded text alone and inside a batch"

    async def controls() -> str:
        exact = await pool.generate_text(text("Hi", max_tokens=50, ignore_eos=True, temperature=0), Priority.SYNC)
        assert exact.completion_tokens == 50 and exact.finish_reason == "length", exact
        deltas: list[str] = []
        streamed = await pool.generate_text(
            text("Count to ten.", max_tokens=20, temperature=0, logprobs=3),
            Priority.SYNC,
            sink=lambda d: deltas.append(d.text) if isinstance(d, TextDelta) else None,
        )
        assert "".join(deltas) == streamed.text, (deltas, streamed.text)
        assert streamed.logprobs and all(len(lp.top) == 3 for lp in streamed.logprobs)
        return "ignore_eos exact length, streamed deltas = text, 3 logprobs per token"

    async def cancellation() -> str:
        import threading

        stop = threading.Event()
        long = asyncio.ensure_future(
            pool.generate_text(text("Go on forever.", max_tokens=2000, ignore_eos=True), Priority.SYNC, cancelled=stop)
        )
        short = asyncio.ensure_future(pool.generate_text(text("Hi", max_tokens=16, ignore_eos=True), Priority.SYNC))
        await asyncio.sleep(0.5)
        stop.set()
        cut, fine = await asyncio.gather(long, short, return_exceptions=True)
        assert not isinstance(fine, BaseException) and fine.completion_tokens == 16, fine
        assert not isinstance(cut, BaseException) and cut.finish_reason == "cancelled", cut
        return f"cancelled row ended after {cut.completion_tokens} of 2000 tokens, its neighbour finished"

    async def throughput() -> dict[str, Any]:
        loaded = await pool.load(ids["text"])
        model, tokenizer = loaded.engine.model, loaded.engine.tokenizer  # type: ignore[attr-defined]
        rows: dict[str, Any] = {}
        for clients in levels:
            asks = [
                text(PROMPTS[i % len(PROMPTS)], max_tokens=tokens, ignore_eos=True, temperature=0)
                for i in range(clients)
            ]
            # warm at this size first: a GPU's first run of new shapes pays for picking its kernels
            await asyncio.gather(*(pool.generate_text(a, Priority.SYNC) for a in asks))
            started = time.perf_counter()
            done = await asyncio.gather(*(pool.generate_text(a, Priority.SYNC) for a in asks))
            ours = sum(r.completion_tokens for r in done) / (time.perf_counter() - started)
            ttft = sorted(r.first_token_seconds for r in done)[len(done) // 2]
            ceiling = await asyncio.get_running_loop().run_in_executor(
                pool.executor, plain_generate, model, tokenizer, clients, tokens
            )
            rows[str(clients)] = {
                "pool_tok_s": round(ours),
                "generate_tok_s": round(ceiling),
                "ratio": round(ours / ceiling, 2),
                "ttft_p50_s": round(ttft, 3),
            }
        report.figures["text_tokens_per_s"] = rows
        return rows

    async def embeddings() -> str:
        texts = ["a cat", "a dog on a long walk by the sea", "bread"]
        batch = await pool.embed(ids["embedding"], texts, Priority.SYNC)
        alone = await pool.embed(ids["embedding"], texts[:1], Priority.SYNC)
        vec = torch.tensor(batch.vectors)
        assert vec.shape == (3, 384) and torch.allclose(vec.norm(dim=1), torch.ones(3), atol=1e-3)
        cosine = float(torch.nn.functional.cosine_similarity(vec[0], torch.tensor(alone.vectors[0]), dim=0))
        assert cosine > 0.99, cosine
        return f"3 unit vectors of 384; alone vs padded batch cosine {cosine:.5f}"

    async def image() -> str:
        import io

        from PIL import Image

        result = await pool.generate_image(
            ImageParams(model=ids["image"], prompt="a red square", width=64, height=64, n=2, seed=1), Priority.SYNC
        )
        again = await pool.generate_image(
            ImageParams(model=ids["image"], prompt="a red square", width=64, height=64, n=1, seed=1), Priority.SYNC
        )
        sizes = [Image.open(io.BytesIO(png)).size for png in result.pngs]
        assert sizes == [(64, 64), (64, 64)], sizes
        same = again.pngs[0] == result.pngs[0]
        return f"2 PNGs 64x64 on {pool.device}; seed 1 again: {'same image' if same else 'differs'}"

    async def unload_frees() -> dict[str, float]:
        before = cuda_mb()
        await pool.unload(ids["text"], force=True)
        await pool.unload(ids["image"], force=True)
        await pool.unload(ids["embedding"], force=True)
        after = cuda_mb()
        assert after < 0.2 * before + 16, (before, after)
        return {
            "allocated_before_mb": round(before, 1),
            "after_mb": round(after, 1),
            "reserved_after_mb": round(torch.cuda.memory_reserved() / 2**20, 1),
        }

    async def budget() -> str:
        from bitinglip.errors import NoRoomToLoad

        tight = ModelPool(settings.model_copy(update={"worker_memory_budget_bytes": 64 * 2**20}), store)
        try:
            await tight.load(ids["text"])
        except NoRoomToLoad as exc:
            return f"refused: {exc}"
        finally:
            await tight.close()
        raise AssertionError("a 270 MB model loaded under a 64 MB budget")

    async def device_map_auto() -> str:
        mapped = ModelPool(settings.model_copy(update={"device_map": "auto"}), store)
        try:
            loaded = await mapped.load(ids["text"])
            where = getattr(loaded.engine.model, "hf_device_map", None)  # type: ignore[attr-defined]
            reply = await mapped.generate_text(text("Hi", max_tokens=8, ignore_eos=True), Priority.SYNC)
            assert reply.completion_tokens == 8
            return f"accelerate placed it: {set(where.values()) if where else where}"
        finally:
            await mapped.close()

    try:
        for name, body in [
            ("placement", placement),
            ("load and memory", load_and_memory),
            ("greedy alone vs batched", greedy_alone_vs_batched),
            ("seeded sampling reproducible", seeded_reproducible),
            ("sampling controls", controls),
            ("cancellation", cancellation),
            ("embeddings", embeddings),
            ("image", image),
            ("throughput", throughput),
            ("unload frees", unload_frees),
            ("memory budget", budget),
            ("device_map auto", device_map_auto),
        ]:
            await report.check(name, body)
    finally:
        await pool.close()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_generate(model: Any, tokenizer: Any, batch: int, tokens: int) -> float:
    """`model.generate` on a left-padded batch of the same chat prompts: the library's own loop."""
    import torch

    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], add_generation_prompt=True, tokenize=False
        )
        for i in range(batch)
    ]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    kw = {
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id or 0,
    }
    with torch.inference_mode():
        model.generate(**inputs, **kw)  # warm, as the pool was
        sync()
        started = time.perf_counter()
        model.generate(**inputs, **kw)
        sync()
    return batch * tokens / (time.perf_counter() - started)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] not in ("kit", "run"):
        print(__doc__)
        return 2
    if argv[0] == "kit":
        make_kit(Path(argv[1]))
        return 0
    report = Report()
    with tempfile.TemporaryDirectory() as root:
        asyncio.run(run_checks(Path(argv[1]), Path(root), report))
    print(
        json.dumps({"figures": report.figures, "failed": [c["check"] for c in report.checks if not c["ok"]]}, indent=1)
    )
    out = Path(argv[2]) if len(argv) == 3 else Path(tempfile.gettempdir()) / "gpu_check.json"
    out.write_text(json.dumps({"checks": report.checks, "figures": report.figures}, indent=1))
    print(f"report: {out}")
    return 0 if all(c["ok"] for c in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
