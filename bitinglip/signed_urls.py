"""Signed, expiring links to stored results, so an `<img>` tag or a Prefect artifact can show an image
without an Authorization header. The signature binds the result's path (which names its owner:
images/OWNER/...) and the expiry; its key is derived from the JWT secret, so no new secret is kept
and rotating the JWT secret voids every link."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

from bitinglip.config import Settings

_PURPOSE = b"bitinglip signed result url v1"
ROUTE = "/api/v1/results/signed"  # where the gateway opens them (api/console/results.py)


def _key(secret: str) -> bytes:
    """A key for this purpose alone: a link signature can never stand in for a login token's."""
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()


def signature(secret: str, path: str, expires: int) -> str:
    return hmac.new(_key(secret), f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def sign(secret: str, base_url: str, path: str, ttl_s: int, now: float | None = None) -> tuple[str, int]:
    """(URL, expiry as Unix seconds) of a link to `path` valid for `ttl_s`."""
    expires = int((time.time() if now is None else now) + ttl_s)
    query = urlencode({"expires": expires, "sig": signature(secret, path, expires)})
    return f"{base_url}/{quote(path)}?{query}", expires


def check(secret: str, path: str, expires: int, sig: str, now: float | None = None) -> str | None:
    """None when the link is good, else why not ("expired" or "invalid"); compared in constant time."""
    if not hmac.compare_digest(signature(secret, path, expires), sig):
        return "invalid"
    if expires < (time.time() if now is None else now):
        return "expired"
    return None


def result_link(settings: Settings, path: str, ttl_s: int) -> tuple[str, int]:
    """(URL, expiry) of a signed link to the stored result `path`, as every process makes them: the
    gateway for API answers, the model worker for Prefect artifacts (same home, same secret)."""
    return sign(settings.secret("jwt_secret"), f"{settings.gateway_url}{ROUTE}", path, ttl_s)
