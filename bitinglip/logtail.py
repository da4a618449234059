"""Reading the components' logs for `bitinglip logs`: the last lines of a (possibly large) file
without reading it whole, and following it across rotations."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

BLOCK = 65536


def log_files(folder: Path) -> dict[str, Path]:
    """Component name -> its current log file (rotated NAME.log.N files are not listed)."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.log")) if p.is_file()}


def last_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines, reading blocks from the end until enough newlines are seen."""
    if count <= 0:
        return []
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        position = fh.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(BLOCK, position)
            position -= step
            fh.seek(position)
            data = fh.read(step) + data
    return data.decode("utf-8", "backslashreplace").splitlines()[-count:]


def follow_lines(path: Path, poll_s: float = 0.5) -> Iterator[str]:
    """New lines as they are written; when the file is rotated (a new inode at the path), the
    rest of the old file is read and the new one followed from its start."""
    fh = path.open("rb")
    fh.seek(0, os.SEEK_END)
    pending = b""
    try:
        while True:
            chunk = fh.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "backslashreplace")
                continue
            try:
                rotated = os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                fh.close()
                fh = path.open("rb")
                continue
            time.sleep(poll_s)
    finally:
        fh.close()
