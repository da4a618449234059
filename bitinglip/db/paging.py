"""Cursor paging for newest-first listings ordered by (created_at desc, id), OpenAI `after` style."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement


def after_cursor(created_at: Any, id_: Any, cursor_created_at: datetime, cursor_id: str) -> ColumnElement[bool]:
    """The rows that come after the cursor row in that order."""
    return (created_at < cursor_created_at) | ((created_at == cursor_created_at) & (id_ > cursor_id))
