"""Signed links to stored results: minted by their owner (or an admin), opened by anyone holding the
link until it expires — an <img> tag or a Prefect artifact cannot send an Authorization header."""

from __future__ import annotations

import asyncio
import mimetypes

from fastapi import APIRouter, Path, Query, Response

from api.console.schemas import SignedLink, SignRequest
from api.deps import FileServiceDep, ScopeDep, SettingsDep, StateDep
from api.files.service import RESULT_PREFIXES
from bitinglip import signed_urls
from bitinglip.errors import NotFound, PermissionDenied
from bitinglip.results import check_key

router = APIRouter(prefix="/api/v1/results", tags=["results"])  # needs credentials
open_router = APIRouter(prefix=signed_urls.ROUTE, tags=["results"])  # the signature is the credential


@router.post("/sign", response_model=SignedLink)
async def sign_result(body: SignRequest, scope: ScopeDep, settings: SettingsDep) -> SignedLink:
    """A link to one of the caller's results (an admin: anyone's) that needs no credentials."""
    path = check_key(body.path)
    owned = RESULT_PREFIXES if scope is None else tuple(f"{p}{scope}/" for p in RESULT_PREFIXES)
    if not path.startswith(owned):
        raise NotFound(f"result {path!r} not found", param="path")
    url, expires = signed_urls.result_link(settings, path, body.ttl_s)
    return SignedLink(url=url, expires_at=expires)


@open_router.get("/{path:path}", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def open_signed(
    files: FileServiceDep,
    settings: SettingsDep,
    state: StateDep,
    path: str = Path(max_length=1024),
    expires: int = Query(ge=0, le=2**42),
    sig: str = Query(pattern=r"^[0-9a-f]{64}$"),
) -> Response:
    """The result behind a link from POST /sign, while the link has not expired and its owner (named
    by the path: images/OWNER/..., jobs/OWNER/...) is an enabled user: disabling a user voids their links."""
    problem = signed_urls.check(settings.secret("jwt_secret"), path, expires, sig)
    if problem is not None:
        raise PermissionDenied(f"this link is {problem}", code=f"link_{problem}")
    key = check_key(path)
    if not key.startswith(RESULT_PREFIXES):
        raise NotFound(f"result {key!r} not found", param="path")
    owner = await asyncio.to_thread(state.auth.accounts.lookup_user, key.split("/")[1])
    if owner is None or owner[0].disabled:
        raise PermissionDenied("this link's owner is disabled", code="link_revoked")
    data = await files.result(key, None)
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})
