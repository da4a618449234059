"""deploy/systemd agrees with the code: `systemd-analyze verify` accepts the units (pointed at this
checkout's venv), every BITINGLIP_* they set is a real setting, and systemd waits longer than the
supervisor's own stop bound before it kills."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bitinglip.config import Settings
from bitinglip.platform import PROJECT_DIR
from bitinglip.supervisor import LAST_WAVE_S

UNITS = PROJECT_DIR / "deploy" / "systemd"


def directives(path: Path) -> dict[str, list[str]]:
    """KEY -> every value it is given (Environment= repeats), comments and sections aside."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_service_unit_matches_the_supervisor() -> None:
    unit = directives(UNITS / "bitinglip.service")
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]  # `up` sends READY=1
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to the supervisor alone; it stops its children
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecStart"][0].endswith("/bin/bitinglip up")
    env = dict(value.partition("=")[::2] for value in unit["Environment"])
    fields = {f"BITINGLIP_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    grace = float(env.get("BITINGLIP_STOP_GRACE_S", Settings().stop_grace_s))
    assert float(unit["TimeoutStopSec"][0]) >= grace + LAST_WAVE_S + 10
    health = directives(UNITS / "bitinglip-health.service")
    assert "bitinglip health" in health["ExecStart"][0]
    assert directives(UNITS / "bitinglip-health.timer")["OnUnitActiveSec"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/bitinglip/.venv/bin", str(venv_bin))
        (tmp_path / unit.name).write_text(text.replace("/opt/bitinglip", str(PROJECT_DIR)))
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
