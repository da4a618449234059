"""A supervised child's output into its own size-capped log file (`bitinglip up`).

The child writes to a pipe; one thread per child copies whole lines into a `RotatingFileHandler`
(NAME.log, rotated to NAME.log.1 ... .N, the oldest deleted), so the lines keep the format the
child wrote (structlog JSON or console) and a rotation never splits one. The child's own logging
is untouched: everything it prints (Prefect's server, uvicorn, llama.cpp's C code) is capped alike."""

from __future__ import annotations

import codecs
import logging
import logging.handlers
import os
import threading
from pathlib import Path
from typing import IO, Any

READ_CHUNK = 65536
MAX_PENDING = 1_000_000  # a "line" longer than this is written in pieces rather than held


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler whose files are created 0600 (logs hold request ids, users, audit lines),
    writing records as they are: a record is already a line (or lines) of the child's output."""

    terminator = ""

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter("%(message)s"))

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")

    def write(self, text: str) -> None:
        """One record per line, so the size check (and a rollover) falls between lines."""
        for line in text.splitlines(keepends=True):
            self.handle(logging.makeLogRecord({"msg": line, "args": None}))  # under the handler lock


class ChildLog:
    """The log of one child name, shared by its successive processes (restarts append)."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self.path = path
        self.handler = PrivateRotatingFileHandler(path, max_bytes, backup_count)
        self._threads: list[threading.Thread] = []

    def attach(self, stream: IO[bytes], name: str) -> None:
        """Copy `stream` (a child's stdout+stderr pipe) until its end, in a daemon thread."""
        thread = threading.Thread(target=self._pump, args=(stream,), name=f"log-{name}", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def write(self, text: str) -> None:
        self.handler.write(text)

    def _pump(self, stream: IO[bytes]) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
        pending = ""
        fd = stream.fileno()
        try:
            while chunk := os.read(fd, READ_CHUNK):
                pending += decoder.decode(chunk)
                cut = pending.rfind("\n") + 1
                if cut == 0 and len(pending) < MAX_PENDING:
                    continue
                cut = cut or len(pending)
                self.handler.write(pending[:cut])
                pending = pending[cut:]
            pending += decoder.decode(b"", final=True)
            if pending:
                self.handler.write(pending + "\n")
        except OSError:
            pass
        finally:
            stream.close()

    def drain(self, timeout: float) -> None:
        """Wait (bounded) for the pumps to write what their children wrote before ending."""
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        self.handler.close()
