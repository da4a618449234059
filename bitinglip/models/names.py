"""Model names and ids (`NAME@REVISION`), validated so a name can never escape the store."""

from __future__ import annotations

import re

from bitinglip.errors import InvalidRequest

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_part(value: str, what: str) -> str:
    if not _SAFE.fullmatch(value) or ".." in value:  # fullmatch: `$` would let a trailing newline in
        raise InvalidRequest(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-' (no path separators)",
            param=what,
        )
    return value


def split_model_id(model_id: str, default_revision: str | None = None) -> tuple[str, str | None]:
    name, _, revision = model_id.partition("@")
    check_part(name, "model")
    if revision:
        check_part(revision, "revision")
        return name, revision
    return name, default_revision
