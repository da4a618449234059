"""Gateway request metrics: an observer for the request-id middleware that counts and times every
request by route template, the in-flight gauge, and the rolling windows behind the JSON summary
(Prometheus keeps the real history)."""

from __future__ import annotations

from collections import defaultdict

from starlette.types import ASGIApp, Receive, Scope, Send

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


class RequestMetrics:
    """Counts and times each answered request by route template; in-flight is kept around the call."""

    def __init__(self, window: GatewayMetrics) -> None:
        self.window = window

    def __call__(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "GET")
        metrics.GATEWAY_REQUESTS.labels(route, method, str(status)).inc()
        metrics.GATEWAY_LATENCY.labels(route, method).observe(seconds)
        if status in REJECTION_REASONS:
            metrics.GATEWAY_REJECTED.labels(REJECTION_REASONS[status]).inc()
        # the console's files and its long-lived event stream are not requests whose latency means anything
        if route not in ("/metrics", "unmatched", "/api/v1/events", "/ui"):
            self.window.observe(route, seconds)


class InFlight:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics.GATEWAY_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            metrics.GATEWAY_IN_FLIGHT.dec()
