"""OpenAI list pages: ask the store for `limit + 1` rows; the extra one only says there is more."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class HasId(Protocol):
    id: str


def cursor_page(rows: Sequence[HasId], limit: int) -> dict[str, Any]:
    data = list(rows[:limit])
    return {
        "data": data,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
        "has_more": len(rows) > limit,
    }
