"""Passwords (argon2), API keys (random, stored as SHA-256, compared in constant time) and login
tokens (short-lived HS256 JWTs)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from bitinglip.errors import Unauthorized

_hasher = PasswordHasher()
_KEY = re.compile(r"^bl-([0-9a-f]{12})-([A-Za-z0-9_-]{32,64})$")
ALGORITHM = "HS256"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@functools.cache
def dummy_password_hash() -> str:
    """A hash no password matches, made with the same parameters as real ones: checking a login of
    an unknown or disabled user against it costs what checking a real user's does."""
    return _hasher.hash(secrets.token_urlsafe(32))


def verify_password(password_hash: str | None, password: str) -> bool:
    if password_hash is None:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str


def new_api_key() -> tuple[str, ParsedKey]:
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    return f"bl-{key_id}-{secret}", ParsedKey(key_id, secret)


def parse_api_key(token: str) -> ParsedKey | None:
    match = _KEY.match(token)
    return ParsedKey(match.group(1), match.group(2)) if match else None


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, secret_hash(secret))


def issue_token(username: str, role: str, secret: str, ttl_s: int) -> str:
    now = int(time.time())
    return jwt.encode({"sub": username, "role": role, "iat": now, "exp": now + ttl_s}, secret, algorithm=ALGORITHM)


def read_token(token: str, secret: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "iat"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("the login token has expired; log in again", code="token_expired") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("invalid credentials") from exc
    return claims
