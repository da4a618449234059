from __future__ import annotations

from fastapi import APIRouter

from api.deps import ModelServiceDep
from api.models.schemas import ModelList

router = APIRouter(prefix="/api/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(models: ModelServiceDep) -> ModelList:
    return ModelList(data=await models.list())
