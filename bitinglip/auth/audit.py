"""The audit trail: one structured log line per security-relevant event (logins, key and user
changes, model changes, denied requests), under the `audit` logger so it can be routed apart."""

from __future__ import annotations

from typing import Any

import structlog

_log = structlog.get_logger("audit")


def audit(event: str, *, actor: str | None, outcome: str = "ok", **fields: Any) -> None:
    _log.info(event, audit=True, actor=actor, outcome=outcome, **fields)
