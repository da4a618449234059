"""`/metrics` (Prometheus) and `/api/v1/metrics` (the JSON summary of the last minute, for people and
the CLI). Both describe the whole platform, so both are for admins (Prometheus scrapes with a key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import AdminDep, StateDep
from bitinglip import metrics

router = APIRouter(tags=["metrics"])


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def prometheus(admin: AdminDep) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/metrics")
async def summary(state: StateDep, admin: AdminDep) -> dict[str, Any]:
    """Last 60 s: gateway requests/s and latency percentiles; per worker and model: queue, tokens/s."""
    window = state.metrics
    values = window.latencies.values()
    routes = {
        route: {
            "requests_per_s": round(w.rate(), 3),
            "p50_ms": _ms(metrics.percentile(w.values(), 50)),
            "p95_ms": _ms(metrics.percentile(w.values(), 95)),
        }
        for route, w in sorted(window.by_route.items())
        if w.values()
    }
    workers = await state.workers.workers(fresh=True)
    return {
        "window_s": window.latencies.seconds,
        "gateway": {
            "requests_per_s": round(window.latencies.rate(), 3),
            "p50_ms": _ms(metrics.percentile(values, 50)),
            "p95_ms": _ms(metrics.percentile(values, 95)),
            "routes": routes,
        },
        "workers": [
            {
                "id": w.id,
                "healthy": w.healthy,
                "queue_depth": w.queue_depth,
                "models": {m["id"]: {k: m.get(k) for k in ("waiting", "running", "tokens_per_s")} for m in w.models},
            }
            for w in workers
        ],
    }
