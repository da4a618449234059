"""Secrets as a new user's first start makes them: generated with `secrets` into home/secrets.json
(0600, home 0700), never a placeholder; placeholders given through the environment are refused in every
environment, and a first-wave home that still holds them is rotated on start. Each case runs a real
gateway process on its own fresh home."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt
import pytest

from bitinglip.auth.accounts import AccountStore
from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.home_secrets import SECRETS, WeakSecret, ensure_secrets
from bitinglip.platform import PROJECT_DIR
from tests.platform_harness import free_port
from tests.security.conftest import envelope

PLACEHOLDER = "change-me"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITINGLIP_", "PREFECT_"))}
    env.update(BITINGLIP_HOME=str(home), BITINGLIP_GATEWAY_PORT=str(free_port()), **extra)
    env["BITINGLIP_PREFECT_PORT"] = str(free_port())  # nothing listens there: the gateway copes
    return env


@contextmanager
def gateway(home: Path, **extra: str) -> Iterator[str]:
    env = _env(home, **extra)
    url = f"http://127.0.0.1:{env['BITINGLIP_GATEWAY_PORT']}"
    process = subprocess.Popen(
        [sys.executable, "-m", "bitinglip.cli", "gateway"],
        env=env,
        cwd=PROJECT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the gateway exited"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _login(url: str, password: str) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/auth/login", json={"username": "admin", "password": password}, timeout=30)


def test_first_start_generates_every_secret_privately(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with gateway(home) as url:
        stored = json.loads((home / "secrets.json").read_text())
        assert set(stored) == set(SECRETS)
        for name, (minimum, _) in SECRETS.items():
            assert len(stored[name]) >= minimum and stored[name] != PLACEHOLDER
        assert _mode(home) == 0o700 and _mode(home / "secrets.json") == 0o600
        assert _mode(home / "gateway.db") == 0o600

        envelope(_login(url, PLACEHOLDER), 401)
        now = int(time.time())
        forged = jwt.encode({"sub": "admin", "role": "admin", "iat": now, "exp": now + 60}, PLACEHOLDER, "HS256")
        envelope(httpx.get(f"{url}/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"}), 401)

        token = _login(url, stored["admin_password"]).json()["access_token"]
        me = httpx.get(f"{url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert me["role"] == "admin"
    with gateway(home):  # a second start keeps what the first made
        assert json.loads((home / "secrets.json").read_text()) == stored


@pytest.mark.parametrize("environment", ["development", "production"])
def test_placeholder_secrets_from_the_environment_are_refused(tmp_path: Path, environment: str) -> None:
    for name in ("JWT_SECRET", "ADMIN_PASSWORD", "WORKER_TOKEN", "PREFECT_AUTH_STRING"):
        env = _env(tmp_path / name, BITINGLIP_ENVIRONMENT=environment, **{f"BITINGLIP_{name}": PLACEHOLDER})
        refused = subprocess.run(
            [sys.executable, "-m", "bitinglip.cli", "gateway"],
            env=env,
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0
        assert f"BITINGLIP_{name}" in refused.stdout + refused.stderr


def test_a_first_wave_home_with_placeholders_is_rotated(tmp_path: Path) -> None:
    """The first wave defaulted to `change-me` for the JWT secret and the admin's password."""
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "secrets.json").write_text(json.dumps({"jwt_secret": PLACEHOLDER, "admin_password": PLACEHOLDER}))
    (home / "secrets.json").chmod(0o644)
    db = Database(Settings(home=home).gateway_db_url)
    AccountStore(db).ensure_admin("admin", PLACEHOLDER, None)
    db.dispose()
    (home / "gateway.db").chmod(0o644)

    with gateway(home) as url:
        stored = json.loads((home / "secrets.json").read_text())
        assert stored["jwt_secret"] != PLACEHOLDER and stored["admin_password"] != PLACEHOLDER
        assert _mode(home) == 0o700 and _mode(home / "secrets.json") == 0o600 and _mode(home / "gateway.db") == 0o600
        envelope(_login(url, PLACEHOLDER), 401)
        assert _login(url, stored["admin_password"]).status_code == 200


def test_ensure_secrets_in_process(tmp_path: Path) -> None:
    """The same rules without processes: strong values given are kept, weak ones refused."""
    strong = "s" * 48
    settings = ensure_secrets(Settings(home=tmp_path, jwt_secret=strong))
    assert settings.secret("jwt_secret") == strong and "jwt_secret" not in json.loads(
        (tmp_path / "secrets.json").read_text()
    )
    assert settings.insecure_settings() == []
    with pytest.raises(WeakSecret, match="BITINGLIP_WORKER_TOKEN"):
        ensure_secrets(Settings(home=tmp_path, worker_token="short"))
    assert Settings(home=tmp_path).secret("worker_token") == settings.secret("worker_token")  # read from home


def test_rotating_the_admin_password_takes_effect_on_restart(tmp_path: Path) -> None:
    """Rotation as docs/security.md says: a new value in secrets.json (or the environment), then a restart."""
    home = tmp_path / "home"
    with gateway(home):
        stored = json.loads((home / "secrets.json").read_text())
    rotated = {**stored, "admin_password": "a-brand-new-admin-password-1"}
    (home / "secrets.json").write_text(json.dumps(rotated))
    with gateway(home) as url:
        envelope(_login(url, stored["admin_password"]), 401)
        assert _login(url, rotated["admin_password"]).status_code == 200
