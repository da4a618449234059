from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import AdminDep, JobServiceDep, ModelMemoryDep, ModelServiceDep, PrincipalDep
from api.jobs.schemas import JobView
from api.models.schemas import (
    DownloadRequest,
    LoadRequest,
    ModelAccessRequest,
    ModelAccessView,
    ModelList,
    ModelMemoryView,
    ModelView,
)

router = APIRouter(prefix="/api/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(models: ModelServiceDep, who: PrincipalDep) -> ModelList:
    """The models the caller may use; sources and install errors for admins only."""
    return ModelList(data=await models.list(who))


@router.post("/download", status_code=202, response_model=JobView)
async def download_model(
    body: DownloadRequest, models: ModelServiceDep, jobs: JobServiceDep, admin: AdminDep, response: Response
) -> JobView:
    """Accepted durably, then run as a `download-model` flow run on the `cpu` pool. A request for a
    model and revision already downloading returns that job (200)."""
    job, created = await models.download(body, admin.username)
    if not created:
        response.status_code = 200
    return await jobs.accepted(job)


@router.get("/{model_id}", response_model=ModelView)
async def get_model(model_id: str, models: ModelServiceDep, who: PrincipalDep) -> ModelView:
    return await models.get(model_id, who)


@router.delete("/{model_id}", status_code=204)
async def delete_model(
    model_id: str,
    models: ModelServiceDep,
    admin: AdminDep,
    force: bool = Query(default=False, description="Even if loaded."),
) -> Response:
    await models.delete(model_id, force, admin)
    return Response(status_code=204)


@router.post("/{model_id}/pin", response_model=ModelView)
async def pin_model(model_id: str, models: ModelServiceDep, admin: AdminDep) -> ModelView:
    return await models.pin(model_id, True, admin)


@router.post("/{model_id}/unpin", response_model=ModelView)
async def unpin_model(model_id: str, models: ModelServiceDep, admin: AdminDep) -> ModelView:
    return await models.pin(model_id, False, admin)


WorkerParam = Annotated[
    str | None, Query(max_length=200, description="One model worker's id; default: every healthy one.")
]


@router.post("/{model_id}/load", response_model=ModelMemoryView)
async def load_model(
    model_id: str,
    memory: ModelMemoryDep,
    admin: AdminDep,
    body: LoadRequest | None = None,
    worker: WorkerParam = None,
) -> ModelMemoryView:
    """(admin) Load the model now and keep it loaded for `keep_alive` after its last request; least
    recently used idle, unpinned models are unloaded to make room. 503 when a worker's memory budget
    cannot fit it (pinned or busy models hold the rest)."""
    return await memory.load(model_id, body.keep_alive if body else None, worker, admin)


@router.post("/{model_id}/unload", response_model=ModelMemoryView)
async def unload_model(
    model_id: str,
    memory: ModelMemoryDep,
    admin: AdminDep,
    force: bool = Query(default=False, description="Even with requests waiting or running (they fail)."),
    worker: WorkerParam = None,
) -> ModelMemoryView:
    """(admin) Unload the model (NAME: every revision loaded); 409 while it has requests waiting or
    running, unless `force`."""
    return await memory.unload(model_id, force, worker, admin)


@router.get("/{model_id}/access", response_model=ModelAccessView)
async def get_model_access(model_id: str, models: ModelServiceDep, admin: AdminDep) -> ModelAccessView:
    """(admin) Who may use the model NAME (every revision): open to every user unless restricted."""
    return await models.get_access(model_id)


@router.put("/{model_id}/access", response_model=ModelAccessView)
async def set_model_access(
    model_id: str, body: ModelAccessRequest, models: ModelServiceDep, admin: AdminDep
) -> ModelAccessView:
    """(admin) Restrict the model NAME to the listed users and API keys, or open it again; to anyone
    else it is then unknown (404) on every route. Admins always may use it."""
    return await models.set_access(model_id, body, admin.username)
