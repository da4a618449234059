"""structlog for every process: JSON in production, readable console in dev; stdlib logs routed too."""

from __future__ import annotations

import logging

import structlog

from bitinglip.config import Settings


def configure_logging(settings: Settings, process: str, console_level: str | None = None) -> None:
    """`console_level` raises the bar for this process's console only (the CLI shows progress bars,
    not Prefect's INFO chatter; those lines still reach the run's log in the Prefect UI)."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.CallsiteParameterAdder({structlog.processors.CallsiteParameter.MODULE}),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    if console_level is not None:
        handler.setLevel(console_level.upper())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    structlog.contextvars.bind_contextvars(process=process)
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
