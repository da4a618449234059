"""Everything the running platform writes under its home is its own: files 0600, folders 0700
(the model store is left out: the test links it in from the session's store)."""

from __future__ import annotations

import stat

from tests.platform_harness import Platform


def test_databases_logs_and_results_are_private(platform: Platform) -> None:
    home = platform.settings.home_dir
    assert platform.client().post("/api/v1/inference/text", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
    checked = {p.relative_to(home).as_posix() for p in home.rglob("*")}
    assert {"gateway.db", "prefect/prefect.db", "logs/gateway.log", "logs/model-worker.log"} <= checked
    loose = [
        f"{path.relative_to(home)} {oct(stat.S_IMODE(path.lstat().st_mode))}"
        for path in home.rglob("*")
        if path.relative_to(home).parts[0] != "models"
        and not path.is_symlink()
        and stat.S_IMODE(path.lstat().st_mode) & 0o077
    ]
    assert not loose, loose
