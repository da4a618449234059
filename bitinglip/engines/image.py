"""Text-to-image with any diffusers pipeline in the store. Each image has its own seeded generator,
so a seed reproduces the same bytes whatever else runs. PNGs carry prompt, seed and model.
Requests run one pipeline call each, so one that raises fails alone (`GenerationFailed`)."""

from __future__ import annotations

import base64
import io
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitinglip.engines.batcher import Batcher, BatchKnobs, DynamicBatcher
from bitinglip.engines.device import module_bytes, release_memory
from bitinglip.engines.types import GenerationFailed
from bitinglip.errors import BitingLipError
from bitinglip.outputs import ImageGeneration, ImageTimings
from bitinglip.schemas import ImageParams

log = logging.getLogger(__name__)


@dataclass
class ImageRequest:
    params: ImageParams
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass
class ImageResult:
    pngs: list[bytes]
    seeds: list[int]
    width: int
    height: int
    total_seconds: float

    def to_output(self) -> ImageGeneration:
        """The PNGs as base64, for JSON."""
        return ImageGeneration(
            images=[base64.b64encode(png).decode() for png in self.pngs],
            seeds=self.seeds,
            timings=ImageTimings(total_seconds=round(self.total_seconds, 5)),
        )


class ImageEngine:
    task = "image"

    def __init__(self, name: str, pipeline: Any, device: str) -> None:
        self.name = name
        self.pipeline = pipeline
        self.device = device

    @classmethod
    def load(cls, name: str, path: Path, device: str, dtype: torch.dtype, device_map: str | None) -> ImageEngine:
        from diffusers import DiffusionPipeline

        pipeline = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype)
        pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
        return cls(name, pipeline, device)

    def make_batcher(
        self, executor: Executor, knobs: BatchKnobs, on_batch: Callable[[int], None] | None
    ) -> Batcher[ImageRequest, ImageResult]:
        # A batch has no side effects, so one that raises is rerun request by request (`isolate`):
        # only the request that also fails alone fails. (Text batches are not: they have streamed.)
        return DynamicBatcher(self.name, self.run_batch, executor, knobs, on_batch, isolate=True)

    def memory_bytes(self) -> int:
        """The pipeline's torch components together (UNet, VAE, text encoders)."""
        return module_bytes(self.pipeline.components.values())

    def unload(self) -> None:
        self.pipeline = None
        release_memory(self.device)

    @torch.inference_mode()
    def run_batch(self, requests: list[ImageRequest]) -> list[ImageResult | BitingLipError]:
        """Requests differ in size and steps, so each is one pipeline call with its n images; a call
        that raises fails its own request only, and the images already made are kept."""
        results: list[ImageResult | BitingLipError] = []
        for request in requests:
            try:
                results.append(self._generate(request))
            except BitingLipError as exc:
                results.append(exc)
            except Exception:
                log.exception("image generation failed for one request on %s", self.name)
                results.append(GenerationFailed("image generation failed for this request"))
        return results

    def _generate(self, request: ImageRequest) -> ImageResult:
        from PIL.PngImagePlugin import PngInfo

        p = request.params
        base = p.seed if p.seed is not None else random.randrange(2**32 - p.n)
        seeds = [base + i for i in range(p.n)]
        images = self.pipeline(
            [p.prompt] * p.n,
            negative_prompt=[p.negative_prompt] * p.n if p.negative_prompt else None,
            width=p.width,
            height=p.height,
            num_inference_steps=p.num_inference_steps,
            guidance_scale=p.guidance_scale,
            generator=[torch.Generator(device="cpu").manual_seed(s) for s in seeds],
        ).images
        pngs = []
        for image, seed in zip(images, seeds, strict=True):
            info = PngInfo()
            info.add_text("prompt", p.prompt)
            info.add_text("seed", str(seed))
            info.add_text("model", self.name)
            info.add_text("steps", str(p.num_inference_steps))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", pnginfo=info)
            pngs.append(buffer.getvalue())
        return ImageResult(pngs, seeds, p.width, p.height, time.perf_counter() - request.enqueued_at)
