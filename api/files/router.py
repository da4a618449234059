from __future__ import annotations

import mimetypes

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from api.deps import FileServiceDep, IdempotencyKeyDep, OwnerDep, ScopeDep, replayed
from api.files.schemas import FileDeleted, FileList, FileObject

router = APIRouter(prefix="/v1/files", tags=["files"])
results_router = APIRouter(prefix="/api/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
async def upload_file(
    files: FileServiceDep,
    owner: OwnerDep,
    response: Response,
    key: IdempotencyKeyDep,
    file: UploadFile = File(...),
    purpose: str = Form(...),
) -> FileObject:
    uploaded, replay = await files.upload(await file.read(), file.filename or "", purpose, owner, key)
    replayed(response, replay)
    return uploaded


@router.get("", response_model=FileList)
async def list_files(
    files: FileServiceDep,
    scope: ScopeDep,
    purpose: str | None = Query(default=None, max_length=32),
    limit: int = Query(default=20, ge=1, le=10_000),
    after: str | None = Query(default=None, max_length=40),
) -> FileList:
    return await files.list(scope, purpose, limit, after)


@router.get("/{file_id}", response_model=FileObject)
async def get_file(file_id: str, files: FileServiceDep, scope: ScopeDep) -> FileObject:
    return await files.get(file_id, scope)


@router.get("/{file_id}/content", response_class=Response, responses={200: {"content": {"application/jsonl": {}}}})
async def file_content(file_id: str, files: FileServiceDep, scope: ScopeDep) -> Response:
    return Response(await files.content(file_id, scope), media_type="application/jsonl")


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, files: FileServiceDep, scope: ScopeDep) -> FileDeleted:
    return await files.delete(file_id, scope)


@results_router.get("/{path:path}", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def download(path: str, files: FileServiceDep, scope: ScopeDep) -> Response:
    """A stored result (e.g. a generated PNG), from the local folder or S3 behind the result store."""
    data = await files.result(path, scope)
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return Response(data, media_type=media_type)
