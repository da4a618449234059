"""Annotated dependencies: routers ask for services, built once in app state by the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.batches.service import BatchService
from api.files.service import FileService
from api.inference.service import InferenceService
from api.jobs.service import JobService
from api.models.service import ModelService
from api.openai.serving import OpenAIServing
from api.state import GatewayState
from api.workers.service import WorkerDirectory
from bitinglip.config import Settings


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


def _settings(state: StateDep) -> Settings:
    return state.settings


def _inference(state: StateDep) -> InferenceService:
    return state.inference


def _jobs(state: StateDep) -> JobService:
    return state.jobs


def _models(state: StateDep) -> ModelService:
    return state.models


def _workers(state: StateDep) -> WorkerDirectory:
    return state.workers


def _openai(state: StateDep) -> OpenAIServing:
    return state.openai


def _files(state: StateDep) -> FileService:
    return state.files


def _batches(state: StateDep) -> BatchService:
    return state.batches


def _owner() -> str:
    """The caller's identity; one shared tenant until authentication lands."""
    return "anonymous"


SettingsDep = Annotated[Settings, Depends(_settings)]
InferenceServiceDep = Annotated[InferenceService, Depends(_inference)]
JobServiceDep = Annotated[JobService, Depends(_jobs)]
ModelServiceDep = Annotated[ModelService, Depends(_models)]
WorkerDirectoryDep = Annotated[WorkerDirectory, Depends(_workers)]
OpenAIServingDep = Annotated[OpenAIServing, Depends(_openai)]
FileServiceDep = Annotated[FileService, Depends(_files)]
BatchServiceDep = Annotated[BatchService, Depends(_batches)]
OwnerDep = Annotated[str, Depends(_owner)]
