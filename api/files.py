from __future__ import annotations

import asyncio
import mimetypes

from fastapi import APIRouter, Response

from api.deps import StateDep

router = APIRouter(prefix="/api/v1/files", tags=["files"])


@router.get("/{path:path}", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def download(path: str, state: StateDep) -> Response:
    """A stored result (e.g. a generated PNG), from the local folder or S3 behind the result store."""
    data = await asyncio.to_thread(state.results.get, path)
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return Response(data, media_type=media_type)
