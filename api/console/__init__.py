"""The web console's side of the gateway: the built UI at /ui, offline API docs, the live event
stream and signed result links. `install` is the one call create_app makes."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api.console import docs, events, results, static
from api.console.hub import EventHub
from api.deps import authenticated
from bitinglip.config import Settings
from bitinglip.http import ERROR_RESPONSES


def install(app: FastAPI, settings: Settings) -> None:
    app.state.console_hub = EventHub(settings.console_events_interval_s)
    # plain routes, as FastAPI's own docs are: no credentials, not in the schema
    app.add_route("/", static.root, include_in_schema=False)
    app.add_route("/docs", docs.swagger_ui, include_in_schema=False)
    app.include_router(results.open_router, responses=ERROR_RESPONSES)
    for router in (events.router, results.router):
        app.include_router(router, dependencies=[Depends(authenticated)], responses=ERROR_RESPONSES)
    app.mount("/ui", static.Console(settings.console_dir or static.DEFAULT_DIST), name="console")
