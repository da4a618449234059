"""Prometheus metrics, named after the ecosystem's conventions (vLLM's latency histograms, Triton's
queue/compute split) with a `bitinglip_` prefix. One module, so names and buckets are defined once;
each process exports the metrics it updates on its own `/metrics`."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_LATENCY = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)

# -- gateway
GATEWAY_REQUESTS = Counter(
    "bitinglip_gateway_requests_total", "HTTP requests answered by the gateway.", ["route", "method", "status"]
)
GATEWAY_LATENCY = Histogram(
    "bitinglip_gateway_request_duration_seconds", "Gateway request duration.", ["route", "method"], buckets=LATENCY
)
GATEWAY_IN_FLIGHT = Gauge("bitinglip_gateway_requests_in_flight", "Requests being handled by the gateway.")
GATEWAY_REJECTED = Counter(
    "bitinglip_gateway_rejected_total", "Requests refused for load: rate limits, full queues, no worker.", ["reason"]
)
JOBS_SUBMITTED = Counter("bitinglip_jobs_submitted_total", "Async jobs accepted.", ["type"])
RESULT_CACHE = Counter(
    "bitinglip_result_cache_total", "Sync answers by result-cache outcome (hit, miss, bypass).", ["answer", "outcome"]
)

# -- model worker
TTFT = Histogram("bitinglip_time_to_first_token_seconds", "Time to first token.", ["model"], buckets=LATENCY)
INTER_TOKEN = Histogram(
    "bitinglip_inter_token_latency_seconds", "Mean time between tokens of a request.", ["model"], buckets=TOKEN_LATENCY
)
E2E = Histogram(
    "bitinglip_e2e_request_latency_seconds", "Request latency inside the worker.", ["model", "task"], buckets=LATENCY
)
QUEUE_TIME = Histogram(
    "bitinglip_request_queue_time_seconds", "Time waiting before compute (Triton's queue).", ["model"], buckets=LATENCY
)
COMPUTE_TIME = Histogram(
    "bitinglip_request_compute_seconds", "Time in compute (Triton's compute).", ["model", "task"], buckets=LATENCY
)
BATCH_SIZE = Histogram(
    "bitinglip_batch_size",
    "Requests per batch (continuous: per admission).",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
PROMPT_TOKENS = Counter("bitinglip_prompt_tokens_total", "Prompt tokens processed.", ["model"])
GENERATION_TOKENS = Counter("bitinglip_generation_tokens_total", "Tokens generated.", ["model"])
IMAGES = Counter("bitinglip_images_total", "Images generated.", ["model"])
EMBEDDINGS = Counter("bitinglip_embeddings_total", "Texts embedded.", ["model"])
MODEL_LOAD = Gauge("bitinglip_model_load_seconds", "Seconds the last load of a model took.", ["model"])
JOBS_FINISHED = Counter("bitinglip_jobs_finished_total", "Async jobs finished.", ["type", "outcome"])
JOB_QUEUE_TIME = Histogram("bitinglip_job_queue_seconds", "Async job: accepted to started.", ["type"], buckets=LATENCY)
JOB_RUN_TIME = Histogram("bitinglip_job_run_seconds", "Async job: started to finished.", ["type"], buckets=LATENCY)


@dataclass(frozen=True)
class ModelLoad:
    model: str
    waiting: int
    running: int


class PoolCollector(Collector):
    """Gauges read at scrape time from the live pool: never stale, nothing to keep in sync."""

    def __init__(self, snapshot: Callable[[], Iterable[ModelLoad]], device_memory: Callable[[], int | None]) -> None:
        self.snapshot = snapshot
        self.device_memory = device_memory

    def collect(self) -> Iterable[GaugeMetricFamily]:
        running = GaugeMetricFamily("bitinglip_num_requests_running", "Requests in a running batch.", labels=["model"])
        waiting = GaugeMetricFamily("bitinglip_num_requests_waiting", "Requests waiting for a batch.", labels=["model"])
        loaded = GaugeMetricFamily("bitinglip_models_loaded", "Models loaded in this worker.")
        count = 0
        for m in self.snapshot():
            running.add_metric([m.model], m.running)
            waiting.add_metric([m.model], m.waiting)
            count += 1
        loaded.add_metric([], count)
        yield from (running, waiting, loaded)
        memory = self.device_memory()
        if memory is not None:
            gpu = GaugeMetricFamily("bitinglip_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated().")
            gpu.add_metric([], memory)
            yield gpu


def register_pool(collector: PoolCollector) -> Callable[[], None]:
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)


class RollingWindow:
    """Recent (time, value) samples for human summaries (requests/s, p50/p95) without a TSDB."""

    def __init__(self, seconds: float = 60.0, max_samples: int = 50_000) -> None:
        self.seconds = seconds
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, value: float) -> None:
        self.samples.append((time.monotonic(), value))

    def values(self) -> list[float]:
        horizon = time.monotonic() - self.seconds
        while self.samples and self.samples[0][0] < horizon:
            self.samples.popleft()
        return [v for _, v in self.samples]

    def rate(self) -> float:
        return len(self.values()) / self.seconds

    def total_rate(self) -> float:
        return sum(self.values()) / self.seconds


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]
