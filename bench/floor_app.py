"""The framework's floor for bench/acceptance.py: one FastAPI route, no middleware, no key, no database,
served by uvicorn like the gateway (uvloop, httptools)."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/me")
async def me() -> dict[str, str]:
    return {"username": "admin", "role": "admin"}
