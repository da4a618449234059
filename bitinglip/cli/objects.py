"""A command per object the gateway keeps: `tasks`, `batch` (beside `batch submit`), `keys`, `users`.
Each talks to the gateway over HTTP with the CLI's key, as every other client does, so it shows what
that key may see and an error is the gateway's own one-line message."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
from rich.table import Table

from bitinglip.cli import _gateway, _segment, app, batch_app, console

tasks_app = typer.Typer(help="Async jobs (POST /api/v1/tasks): list, show, cancel, watch.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
users_app = typer.Typer(help="Users (admins): create, list, disable.", no_args_is_help=True)
app.add_typer(users_app, name="users")

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


def _listing(path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A route that answers a JSON list (users, keys)."""
    return cast(list[dict[str, Any]], _gateway("GET", path, params=params or {}))


def _when(value: object) -> str:
    """An ISO timestamp or epoch seconds as a short UTC time; '' when unset."""
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("T", " ")[:19]


# -- tasks


@tasks_app.command("list")
def tasks_list(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this state.")] = None,
    type: Annotated[str | None, typer.Option("--type", help="text, embedding, image, download, batch.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Your jobs, newest first (an admin sees everyone's)."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status
    if type:
        params["type"] = type
    page = _gateway("GET", "/api/v1/tasks", params=params)
    table = Table("id", "type", "model", "status", "priority", "owner", "created", "finished")
    for job in page["items"]:
        table.add_row(
            job["id"],
            job["type"],
            job["model"],
            job["status"],
            job["priority"],
            job["owner"],
            _when(job["created_at"]),
            _when(job["finished_at"]),
        )
    console.print(table)
    console.print(f"{len(page['items'])} of {page['total']} (offset {page['offset']})")


@tasks_app.command("show")
def tasks_show(job_id: str) -> None:
    """One job: state, timings, its Prefect run, and its result or error."""
    import json

    job = _gateway("GET", f"/api/v1/tasks/{_segment(job_id)}")
    table = Table("field", "value")
    for key in ("id", "type", "model", "status", "priority", "owner", "attempts", "worker", "prefect_url"):
        table.add_row(key, "" if job.get(key) is None else str(job[key]))
    for key in ("created_at", "started_at", "finished_at"):
        table.add_row(key, _when(job.get(key)))
    console.print(table)
    for key in ("error", "result"):
        if job.get(key) is not None:
            text = json.dumps(job[key], indent=2)
            console.print(f"{key}:", text if len(text) < 4000 else text[:4000] + "\n...", highlight=False)


@tasks_app.command("cancel")
def tasks_cancel(job_id: str) -> None:
    """Cancel a job: a queued one at once, a running one at its next step."""
    job = _gateway("DELETE", f"/api/v1/tasks/{_segment(job_id)}")
    note = ""
    if job["status"] == "running":
        note = " (cancel requested: it stops at its next step)"
    elif job["status"] in ("completed", "failed"):
        note = " (it had finished: nothing to cancel)"
    console.print(f"{job['id']}: {job['status']}{note}")


# -- batches (beside `batch submit`)


@batch_app.command("list")
def batch_list(limit: Annotated[int, typer.Option(min=1, max=100)] = 20) -> None:
    """Your batches, newest first."""
    page = _gateway("GET", "/v1/batches", params={"limit": limit})
    table = Table("id", "status", "endpoint", "completed", "failed", "total", "created")
    for b in page["data"]:
        counts = b["request_counts"]
        table.add_row(
            b["id"],
            b["status"],
            b["endpoint"],
            str(counts["completed"]),
            str(counts["failed"]),
            str(counts["total"]),
            _when(b["created_at"]),
        )
    console.print(table)


@batch_app.command("status")
def batch_status(batch_id: str) -> None:
    """One batch: state, counts, its output and error files."""
    b = _gateway("GET", f"/v1/batches/{_segment(batch_id)}")
    counts = b["request_counts"]
    console.print(
        f"{b['id']}: {b['status']} ({counts['completed']} completed, {counts['failed']} failed of {counts['total']})"
    )
    for key in ("endpoint", "input_file_id", "output_file_id", "error_file_id", "prefect_run_id"):
        if b.get(key):
            console.print(f"  {key}: {b[key]}", highlight=False)


@batch_app.command("cancel")
def batch_cancel(batch_id: str) -> None:
    """Cancel a batch: lines not yet run are not run; finished ones stay in its output."""
    b = _gateway("POST", f"/v1/batches/{_segment(batch_id)}/cancel")
    console.print(f"{b['id']}: {b['status']}")


@batch_app.command("download")
def batch_download(
    batch_id: str,
    output: Annotated[
        Path | None, typer.Option(help="Folder to write BATCH.output.jsonl / BATCH.errors.jsonl into.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the batch to finish first.")] = False,
) -> None:
    """Write a batch's output and error files (JSONL, OpenAI's format)."""
    b = _gateway("GET", f"/v1/batches/{_segment(batch_id)}")
    while wait and b["status"] not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(1)
        b = _gateway("GET", f"/v1/batches/{_segment(batch_id)}")
    folder = output or Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for key, suffix in (("output_file_id", "output"), ("error_file_id", "errors")):
        if b.get(key):
            target = folder / f"{b['id']}.{suffix}.jsonl"  # the id as the gateway knows it, not as typed
            target.write_bytes(_gateway("GET", f"/v1/files/{_segment(b[key])}/content")["content"])
            console.print(f"{suffix}: {target}")
            written += 1
    if not written:
        console.print(f"[red]{batch_id} has no output yet[/] ({b['status']}); --wait waits for it")
        raise typer.Exit(1)


# -- keys


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key (where it is used).")] = "default",
    user: Annotated[str | None, typer.Option(help="Admins: create it for this user.")] = None,
    rate_limit_per_minute: Annotated[int | None, typer.Option(min=1, help="Narrow the user's rate limit.")] = None,
    tokens_per_day: Annotated[int | None, typer.Option(min=1, help="Narrow the user's daily tokens.")] = None,
) -> None:
    """Create an API key; it is printed this once (only its hash is stored)."""
    body: dict[str, Any] = {"name": name}
    for field, value in (
        ("username", user),
        ("rate_limit_per_minute", rate_limit_per_minute),
        ("tokens_per_day", tokens_per_day),
    ):
        if value is not None:
            body[field] = value
    key = _gateway("POST", "/api/v1/auth/keys", json=body)
    console.print(f"key {key['id']} for {key['username']} ({key['name']}):")
    console.out(key["key"], highlight=False)


@keys_app.command("list")
def keys_list(user: Annotated[str | None, typer.Option(help="Admins: this user's keys.")] = None) -> None:
    """Your keys (an admin: everyone's), never the secrets."""
    table = Table("id", "name", "user", "created", "last used", "revoked")
    for k in _listing("/api/v1/auth/keys", {} if user is None else {"username": user}):
        table.add_row(
            k["id"],
            k["name"],
            k["username"],
            _when(k["created_at"]),
            _when(k["last_used_at"]),
            _when(k["revoked_at"]),
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key at once (its id, as `keys list` shows it)."""
    key = _gateway("DELETE", f"/api/v1/auth/keys/{_segment(key_id)}")
    console.print(f"revoked {key['id']} ({key['name']}, {key['username']})")


# -- users


@users_app.command("create")
def users_create(
    username: str,
    admin: Annotated[bool, typer.Option(help="Make an admin instead of a user.")] = False,
    password: Annotated[
        bool, typer.Option(help="Prompt for a password (12+ characters) so the user can log in.")
    ] = False,
) -> None:
    """Create a user (then `keys create --user NAME` gives them a key)."""
    body: dict[str, Any] = {"username": username, "role": "admin" if admin else "user"}
    if password:
        body["password"] = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    user = _gateway("POST", "/api/v1/users", json=body)
    console.print(f"created {user['role']} {user['username']}")


@users_app.command("list")
def users_list() -> None:
    """Every user, their role and whether they are disabled."""
    table = Table("user", "role", "disabled", "created")
    for u in _listing("/api/v1/users"):
        table.add_row(u["username"], u["role"], "yes" if u["disabled"] else "", _when(u["created_at"]))
    console.print(table)


@users_app.command("disable")
def users_disable(
    username: str, enable: Annotated[bool, typer.Option("--enable", help="Enable them again instead.")] = False
) -> None:
    """Disable a user: their keys and logins stop working at once (--enable undoes it)."""
    user = _gateway("PATCH", f"/api/v1/users/{_segment(username)}", json={"disabled": not enable})
    console.print(f"{user['username']} {'disabled' if user['disabled'] else 'enabled'}")
