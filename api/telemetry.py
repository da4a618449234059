"""Gateway request metrics: a pure-ASGI middleware that counts and times every request by route
template, and the rolling windows behind the JSON summary (Prometheus keeps the real history)."""

from __future__ import annotations

import time
from collections import defaultdict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bitinglip import metrics

REJECTION_REASONS = {429: "rate_limited", 503: "unavailable", 413: "too_large"}


class GatewayMetrics:
    """Rolling windows behind the JSON summary (Prometheus keeps the real history)."""

    def __init__(self) -> None:
        self.latencies = metrics.RollingWindow()
        self.by_route: dict[str, metrics.RollingWindow] = defaultdict(metrics.RollingWindow)

    def observe(self, route: str, seconds: float) -> None:
        self.latencies.add(seconds)
        self.by_route[route].add(seconds)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, window: GatewayMetrics) -> None:
        self.app = app
        self.window = window

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics.GATEWAY_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, capture)
        finally:
            metrics.GATEWAY_IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            method = scope.get("method", "GET")
            metrics.GATEWAY_REQUESTS.labels(route, method, str(status)).inc()
            metrics.GATEWAY_LATENCY.labels(route, method).observe(elapsed)
            if status in REJECTION_REASONS:
                metrics.GATEWAY_REJECTED.labels(REJECTION_REASONS[status]).inc()
            if route not in ("/metrics", "unmatched"):
                self.window.observe(route, elapsed)
