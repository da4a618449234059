from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    """Aggregated health: 200 when the gateway can serve sync requests (a healthy worker exists)."""
    prefect: dict[str, Any] = {"url": state.settings.prefect_ui_url}
    try:
        response = await state.http.get(f"{state.settings.prefect_api}/health", timeout=2.0)
        prefect["status"] = "ok" if response.status_code == 200 else f"http {response.status_code}"
    except httpx.HTTPError as exc:
        prefect["status"] = f"unreachable: {type(exc).__name__}"
    workers = await state.workers.workers(fresh=True)
    body = {
        "status": "ok" if prefect["status"] == "ok" and any(w.healthy for w in workers) else "degraded",
        "gateway": {"status": "ok", "url": state.settings.gateway_url},
        "prefect": prefect,
        "dispatcher": {"status": "ok" if state.dispatcher.healthy else "retrying"},
        "workers": [
            {
                "id": w.id,
                "url": w.url,
                "healthy": w.healthy,
                "device": w.device,
                "heartbeat_age_s": round(w.heartbeat_age_s, 2),
                "queue_depth": w.queue_depth,
                "models": [m["id"] for m in w.models],
            }
            for w in workers
        ],
    }
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
