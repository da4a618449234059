from __future__ import annotations

from fastapi import APIRouter, Query, Request

from api.auth.schemas import (
    CreatedKey,
    KeyCreateRequest,
    KeyView,
    LoginRequest,
    Me,
    TokenResponse,
    UserCreateRequest,
    UserUpdateRequest,
    UserView,
)
from api.deps import AuthServiceDep, PrincipalDep

login_router = APIRouter(prefix="/api/v1/auth", tags=["auth"])  # open: it is how one gets credentials
router = APIRouter(prefix="/api/v1", tags=["auth"])


@login_router.post("/login", response_model=TokenResponse)
async def login(body: LoginRequest, request: Request, auth: AuthServiceDep) -> TokenResponse:
    client = request.client.host if request.client else "unknown"
    return await auth.login(body.username, body.password, client)


@router.get("/auth/me", response_model=Me)
async def me(who: PrincipalDep, auth: AuthServiceDep) -> Me:
    return auth.me(who)


@router.post("/auth/keys", status_code=201, response_model=CreatedKey)
async def create_key(body: KeyCreateRequest, who: PrincipalDep, auth: AuthServiceDep) -> CreatedKey:
    return await auth.create_key(who, body)


@router.get("/auth/keys", response_model=list[KeyView])
async def list_keys(
    who: PrincipalDep, auth: AuthServiceDep, username: str | None = Query(default=None, max_length=64)
) -> list[KeyView]:
    return await auth.list_keys(who, username)


@router.delete("/auth/keys/{key_id}", response_model=KeyView)
async def revoke_key(key_id: str, who: PrincipalDep, auth: AuthServiceDep) -> KeyView:
    return await auth.revoke_key(who, key_id)


@router.post("/users", status_code=201, response_model=UserView)
async def create_user(body: UserCreateRequest, who: PrincipalDep, auth: AuthServiceDep) -> UserView:
    return await auth.create_user(who, body)


@router.get("/users", response_model=list[UserView])
async def list_users(who: PrincipalDep, auth: AuthServiceDep) -> list[UserView]:
    return await auth.users(who)


@router.patch("/users/{username}", response_model=UserView)
async def update_user(username: str, body: UserUpdateRequest, who: PrincipalDep, auth: AuthServiceDep) -> UserView:
    return await auth.update_user(who, username, body)
