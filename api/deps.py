"""Annotated dependencies: routers ask for services (built once in app state by the lifespan) and
for the caller; every route but /health, the docs and login depends on `authenticated`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth.service import AuthService
from api.batches.service import BatchService
from api.files.service import FileService
from api.inference.metered import MeteredInference
from api.jobs.service import JobService
from api.models.memory import ModelMemoryService
from api.models.service import ModelService
from api.state import GatewayState
from api.usage.service import UsageService
from api.workers.service import WorkerDirectory
from bitinglip.auth.principal import Principal
from bitinglip.config import Settings
from bitinglip.idempotency import HEADER, check_key
from bitinglip.models.access import bind_caller
from bitinglip.result_cache import CacheUse
from bitinglip.serving.serving import OpenAIServing

T = TypeVar("T")


def _gateway(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def _from_state(pick: Callable[[GatewayState], T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency for what the lifespan built (or makes from it), read from the request."""

    async def dependency(request: Request) -> T:
        return pick(_gateway(request))

    return dependency


StateDep = Annotated[GatewayState, Depends(_from_state(lambda s: s))]


# Declares the bearer scheme in OpenAPI (so /docs has "Authorize"); the header is checked below.
BEARER = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="An API key (bl-...) or a login token from /api/v1/auth/login."
)


async def authenticated(
    request: Request,
    response: Response,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Principal:
    """The caller, counted against its rate limit; the limit's state goes out in X-RateLimit-*.

    The dependencies on every request take services from the request (`_gateway`), not through
    `StateDep`: FastAPI resolves each dependency node anew on every request, cached or not, and at a
    few hundred requests a second the nodes were a third of an accepted job's time in the gateway."""
    principal, rate = await _gateway(request).auth.authenticate(request.headers.get("authorization"), request.url.path)
    response.headers.update(rate.headers())
    request.state.principal = principal
    bind_caller(principal)  # model lookups in this request see only the models the caller may use
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticated)]


async def _admin(who: PrincipalDep, request: Request) -> Principal:
    _gateway(request).auth.require_admin(who, f"{request.method} {request.url.path}")
    return who


async def _owner(who: PrincipalDep) -> str:
    """The owner of what this request creates."""
    return who.username


async def _scope(who: PrincipalDep) -> str | None:
    """The owner filter of what this request reads: None (everything) for admins."""
    return who.scope


async def _metered(who: PrincipalDep, request: Request, response: Response) -> MeteredInference:
    """`Cache-Control: no-cache|no-store` opts out of the result cache; `X-Cache` says what it did."""

    def report(outcome: str) -> None:
        response.headers["X-Cache"] = outcome

    use = CacheUse.from_header(request.headers.get("cache-control"), report)
    state = _gateway(request)
    return MeteredInference(state.inference, state.limiter, who, use)


async def _openai(request: Request, metered: Annotated[MeteredInference, Depends(_metered)]) -> OpenAIServing:
    return OpenAIServing(metered, _gateway(request).models)


async def _idempotency_key(
    request: Request,
    _declared: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="Repeat a create safely: the same key with the same request returns the object the first "
            "one made (with `Idempotent-Replayed: true`); with another request it is a 409. Yours alone; "
            "remembered for BITINGLIP_IDEMPOTENCY_TTL_S (24 h). 1-255 visible ASCII characters.",
        ),
    ] = None,
) -> str | None:
    return check_key(request.headers.getlist(HEADER))


def replayed(response: Response, replay: bool) -> None:
    """Marks an answer that repeats what an earlier request with the same Idempotency-Key made."""
    if replay:
        response.headers["Idempotent-Replayed"] = "true"


SettingsDep = Annotated[Settings, Depends(_from_state(lambda s: s.settings))]
InferenceDep = Annotated[MeteredInference, Depends(_metered)]
JobServiceDep = Annotated[JobService, Depends(_from_state(lambda s: s.jobs))]
ModelServiceDep = Annotated[ModelService, Depends(_from_state(lambda s: s.models))]
ModelMemoryDep = Annotated[
    ModelMemoryService, Depends(_from_state(lambda s: ModelMemoryService(s.models, s.workers, s.worker_client)))
]
WorkerDirectoryDep = Annotated[WorkerDirectory, Depends(_from_state(lambda s: s.workers))]
OpenAIServingDep = Annotated[OpenAIServing, Depends(_openai)]
FileServiceDep = Annotated[FileService, Depends(_from_state(lambda s: s.files))]
BatchServiceDep = Annotated[BatchService, Depends(_from_state(lambda s: s.batches))]
AuthServiceDep = Annotated[AuthService, Depends(_from_state(lambda s: s.auth))]
UsageServiceDep = Annotated[
    UsageService, Depends(_from_state(lambda s: UsageService(s.settings, s.auth.accounts, s.limiter)))
]
AdminDep = Annotated[Principal, Depends(_admin)]
OwnerDep = Annotated[str, Depends(_owner)]
ScopeDep = Annotated[str | None, Depends(_scope)]
IdempotencyKeyDep = Annotated[str | None, Depends(_idempotency_key)]
