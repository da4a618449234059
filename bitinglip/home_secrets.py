"""The platform's home and its secrets: every secret is generated with `secrets` on first start into
home/secrets.json (0600, home 0700), never a placeholder; a stored placeholder or short value is
rotated on start, and one given through the environment is refused (docs/security.md, "Secrets")."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

if TYPE_CHECKING:
    from bitinglip.config import Settings

log = logging.getLogger(__name__)

# name -> (shortest accepted length, how to make one)
SECRETS: dict[str, tuple[int, Any]] = {
    "jwt_secret": (32, lambda: secrets.token_urlsafe(48)),
    "admin_password": (12, lambda: secrets.token_urlsafe(18)),
    "prefect_auth_string": (24, lambda: f"bitinglip:{secrets.token_urlsafe(32)}"),
    "worker_token": (32, lambda: secrets.token_urlsafe(32)),
}
# Values seen in tutorials, templates and this project's own first wave: never accepted anywhere.
PLACEHOLDERS = frozenset({"change-me", "changeme", "change_me", "secret", "password", "admin", "test", "example"})
FILE_NAME = "secrets.json"


class WeakSecret(RuntimeError):
    """A secret given through the environment is a placeholder or too short."""


def _default_home() -> Path:
    return Path(os.environ.get("BITINGLIP_HOME", "~/.bitinglip"))


def read_secrets(home: Path) -> dict[str, str]:
    path = home.expanduser() / FILE_NAME
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if k in SECRETS and isinstance(v, str)}


class HomeSecretsSource(PydanticBaseSettingsSource):
    """pydantic-settings source: the secrets in home/secrets.json, below arguments and environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        home = self.current_state.get("home") or _default_home()
        stored = read_secrets(Path(home))
        return {k: v for k, v in stored.items() if self.current_state.get(k) is None}


def is_weak(name: str, value: str | None) -> bool:
    minimum, _ = SECRETS[name]
    return value is None or value.strip().lower() in PLACEHOLDERS or len(value) < minimum


def weak_secrets(settings: Settings) -> list[str]:
    problems = []
    for name, (minimum, _) in SECRETS.items():
        value = getattr(settings, name)
        if is_weak(name, value.get_secret_value() if value is not None else None):
            problems.append(f"BITINGLIP_{name.upper()} is missing, a placeholder or shorter than {minimum} characters")
    return problems


def secure_home(home: Path) -> None:
    """Home 0700 and everything this process creates private (umask 077): databases, logs, results
    and model files are the platform's alone. Existing files of an older home are tightened too."""
    os.umask(0o077)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    for path in [home, *(p for p in (home / "logs", home / "prefect") if p.is_dir())]:
        for entry in path.iterdir():
            if entry.is_symlink():
                continue
            entry.chmod(0o700 if entry.is_dir() else 0o600)


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Processes starting together (gateway and worker on a first start) make the secrets once."""
    with (home / ".secrets.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(home: Path, values: dict[str, str]) -> None:
    path = home / FILE_NAME
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh, indent=2)
    os.replace(tmp, path)


def ensure_secrets(settings: Settings) -> Settings:
    """Settings with every secret present and strong. Missing ones are generated into the home file;
    weak ones stored there are rotated (with a warning); weak ones from the environment or arguments
    are refused, in every environment."""
    home = settings.home_dir
    secure_home(home)
    with _locked(home):
        stored = read_secrets(home)
        updates: dict[str, str] = {}
        for name, (_, make) in SECRETS.items():
            current = getattr(settings, name)
            value = current.get_secret_value() if current is not None else None
            from_file = value is not None and stored.get(name) == value
            if not is_weak(name, value):
                continue
            if value is not None and not from_file:
                raise WeakSecret(
                    f"BITINGLIP_{name.upper()} is a placeholder or too short; unset it to have one generated "
                    f"into {home / FILE_NAME}, or set a random value of at least {SECRETS[name][0]} characters"
                )
            if from_file:
                log.warning("rotating the placeholder or short %s stored in %s", name, home / FILE_NAME)
            updates[name] = make()
        if updates:
            _write(home, {**stored, **updates})
    if not updates:
        return settings
    from pydantic import SecretStr

    return settings.model_copy(update={k: SecretStr(v) for k, v in updates.items()})
