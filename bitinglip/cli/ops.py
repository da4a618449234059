"""Operating a running platform: `down`, `health`, `logs`, `backup`, `restore`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from bitinglip.cli import app, console
from bitinglip.config import Settings, get_settings
from bitinglip.pidfile import is_stale, running


def _plain_settings() -> Settings:
    """Settings without touching the home: these commands must work on (or into) a home that
    `up` never started, and must not generate secrets there as a side effect."""
    return get_settings()


@app.command()
def down(
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for the stop (default: the stop grace + 20 s).")
    ] = None,
) -> None:
    """Stop the platform `bitinglip up` runs from this home (SIGTERM to its supervisor, which stops
    every child gracefully, then forcibly after BITINGLIP_STOP_GRACE_S)."""
    settings = _plain_settings()
    info = running(settings.pid_file)
    if info is None:
        stale = " (a stale pidfile was left by a supervisor that was killed)" if is_stale(settings.pid_file) else ""
        console.print(f"no platform is running from {settings.home_dir}{stale}")
        return
    if info.pid <= 0:
        console.print("[red]the pidfile is held but names no pid: the platform is still starting; try again[/]")
        raise typer.Exit(1)
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        console.print(f"[red]not allowed to signal pid {info.pid}[/] (started by another user?)")
        raise typer.Exit(1) from exc
    deadline = time.monotonic() + (timeout if timeout is not None else settings.stop_grace_s + 20)
    with console.status(f"stopping the platform (supervisor pid {info.pid})"):
        while running(settings.pid_file) is not None:
            if time.monotonic() > deadline:
                console.print(f"[red]pid {info.pid} is still stopping[/]; `kill -KILL {info.pid}` ends it at once")
                raise typer.Exit(1)
            time.sleep(0.2)
    console.print(f"stopped (supervisor pid {info.pid})")


@app.command()
def health(
    url: Annotated[str | None, typer.Option(help="Gateway URL (default: BITINGLIP_GATEWAY_HOST/PORT).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before an unanswered check counts as down.")] = 5.0,
) -> None:
    """Exit 0 when the gateway answers healthy (Prefect up, a healthy model worker), else 1: for
    service managers, container health checks and monitors. Prints one line."""
    import httpx

    base = url or _plain_settings().gateway_url
    try:
        response = httpx.get(f"{base.rstrip('/')}/health", timeout=timeout)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        console.print(f"down: {base} unreachable ({type(exc).__name__})")
        raise typer.Exit(1) from exc
    if response.status_code == 200:
        workers = sum(1 for w in body.get("workers", []) if w.get("healthy"))
        console.print(f"ok: gateway, prefect, {workers} healthy model worker(s)")
        return
    problems = []
    prefect = body.get("prefect", {}).get("status")
    if prefect != "ok":
        problems.append(f"prefect {prefect}")
    if not any(w.get("healthy") for w in body.get("workers", [])):
        problems.append("no healthy model worker")
    console.print(f"degraded: {', '.join(problems) or f'http {response.status_code}'}")
    raise typer.Exit(1)


@app.command()
def logs(
    component: Annotated[
        str | None, typer.Argument(help="gateway, model-worker, prefect-server, pool-worker-gpu, ... (default: list)")
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many of the last lines to show.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C ends).")] = False,
) -> None:
    """Show a component's log from the home's logs folder (without COMPONENT: the logs there)."""
    from bitinglip.logtail import follow_lines, last_lines, log_files

    folder = _plain_settings().home_dir / "logs"
    files = log_files(folder)
    if component is None:
        if not files:
            console.print(f"no logs in {folder}")
            raise typer.Exit(1)
        for name, path in files.items():
            console.print(f"{name:24} {path.stat().st_size / 1e6:8.2f} MB  {path}", highlight=False)
        return
    if component not in files:
        known = ", ".join(files) or "none yet"
        console.print(f"[red]no log named {component!r}[/] in {folder} (there: {known})")
        raise typer.Exit(1)
    for line in last_lines(files[component], lines):
        console.out(line, highlight=False)
    if follow:
        try:
            for line in follow_lines(files[component]):
                console.out(line, highlight=False)
        except KeyboardInterrupt:
            return


@app.command("backup")
def backup_command(
    path: Annotated[Path, typer.Argument(help="Archive to write (.tar, or .tar.gz / .tgz to compress).")],
) -> None:
    """Copy the gateway and Prefect databases (consistently, while running), the model store, local
    results and the secrets into one archive (mode 0600: it holds the secrets)."""
    from bitinglip.backup import BackupError, backup, describe

    try:
        report = backup(_plain_settings(), path)
    except BackupError as exc:
        console.print(f"[red]backup failed:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"backup written to {report.path}")
    for line in describe(report):
        console.print(f"  {line}", highlight=False)


@app.command("restore")
def restore_command(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An archive `bitinglip backup` wrote.")],
    force: Annotated[bool, typer.Option(help="Overwrite a home that is not empty.")] = False,
) -> None:
    """Restore an archive into BITINGLIP_HOME (refused over a non-empty home without --force, and
    always while a platform runs from it); then `bitinglip up`."""
    from bitinglip.backup import BackupError, describe, restore

    settings = _plain_settings()
    try:
        report = restore(settings, path, force=force)
    except BackupError as exc:
        console.print(f"[red]restore refused:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"restored {path} into {settings.home_dir}")
    for line in describe(report):
        console.print(f"  {line}", highlight=False)
