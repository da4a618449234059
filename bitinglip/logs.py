"""structlog for every process: JSON in production, readable console in dev; stdlib logs routed too.

Three rules hold for every line, whoever logs it (our code, uvicorn, Prefect, libraries):

- Nothing is formatted or written on the caller's thread. A record goes into a bounded queue and one
  writer thread renders and writes it, so an error on the event loop costs the request microseconds,
  not the seconds a rich traceback with locals took (`/health` stalled behind one).
- A traceback is plain text without local variables (locals held API keys, tokens and prompts), only
  its innermost frames, and at most `MAX_TRACEBACK_LINES` lines.
- Credentials are masked in the message, every field and the traceback (`Redactor`): API keys,
  JWTs, `Authorization` values, `password=`/`token=`/`api_key=`-style pairs, URL passwords, and the
  literal secrets this process knows. Prompts are never logged above DEBUG.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import SecretStr
from structlog.types import EventDict, ExcInfo, WrappedLogger

from bitinglip.config import Settings

MAX_TRACEBACK_FRAMES = 12  # innermost frames kept per exception of a chain
MAX_TRACEBACK_LINES = 80  # one error never writes more than this
MAX_LINE_CHARS = 1000  # an exception message can carry anything; a line is cut here
QUEUE_SIZE = 10_000  # records waiting for the writer; beyond that they are dropped and counted
REDACTED = "[REDACTED]"

# What a credential looks like wherever it appears (text, reprs of headers, query strings, env dumps).
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # our API keys: keep the key id (public, it names the key in listings), drop the secret
    (re.compile(r"\b(bl-[0-9a-f]{12}-)[A-Za-z0-9_-]{8,}"), rf"\g<1>{REDACTED}"),
    # JWTs (login tokens, anyone's)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Authorization values, in a header line, a dict repr or ASGI's byte pairs (12+ characters, so
    # "Basic settings" stays readable; every credential we issue is longer)
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=:-]{12,}"), rf"\g<1>\g<2>{REDACTED}"),
    # a quoted value whose name says secret is masked whole, spaces and all ("password": "a b")
    (
        re.compile(
            r"(?i)\b([\w-]*(?:password|passwd|secret|token|api[_-]?key|auth[_-]?string|authorization|credentials?)"
            r"[\"']?\s*[:=]\s*b?)([\"'])(?!\[REDACTED\])(?:\\.|(?!\2).)*\2"
        ),
        rf"\g<1>\g<2>{REDACTED}\g<2>",
    ),
    # name=value / "name": "value" pairs whose name says secret (query strings, JSON, env dumps, kwargs)
    (
        re.compile(
            r"(?i)\b([\w-]*(?:password|passwd|secret|token|api[_-]?key|auth[_-]?string|authorization|credentials?)"
            r"[\"']?\s*[:=]\s*b?[\"']?)(?!\[REDACTED\])([^\s\"'&,;)}\]]+)"
        ),
        rf"\g<1>{REDACTED}",
    ),
    # user:password@ in URLs (database, Redis, Prefect)
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)(@)"), rf"\g<1>{REDACTED}\g<3>"),
)
# Something every pattern above needs to match: text without any of it (most lines) skips them all.
_MIGHT_HOLD_A_CREDENTIAL = re.compile(
    r"(?i)bl-|eyJ|bearer|basic|token|passw|secret|api[_-]?key|auth[_-]?string|authorization|credential|://"
)
# A field named like this holds a credential whatever its value looks like.
_SECRET_FIELD = re.compile(
    r"(?i)^(.*(password|passwd|secret|api[_-]?key|auth[_-]?string|authorization|credentials?)|(.*_)?token)$"
)


def redact_text(text: str, literals: Iterable[str] = ()) -> str:
    """`text` with every credential masked. Also makes it writable: a lone UTF-16 surrogate (which
    the log file's UTF-8 cannot hold) is written as its escape instead of failing the write."""
    for literal in literals:
        if literal in text:
            text = text.replace(literal, REDACTED)
    if _MIGHT_HOLD_A_CREDENTIAL.search(text):
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class Redactor:
    """structlog processor: masks credentials in the event and in every field, nested ones included,
    just before rendering (so tracebacks rendered into `exception` are covered too)."""

    def __init__(self, literals: Iterable[str] = ()) -> None:
        # longest first, so a secret containing another is masked whole
        self.literals = tuple(sorted({s for s in literals if len(s) >= 8}, key=len, reverse=True))

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        return {key: self._value(key, value) for key, value in event_dict.items()}

    def _value(self, key: Any, value: Any, depth: int = 0) -> Any:
        if isinstance(key, str) and _SECRET_FIELD.match(key) and not (value is None or isinstance(value, bool)):
            return REDACTED  # (None and flags such as `has_password=True` say nothing secret)
        if isinstance(value, str):
            return redact_text(value, self.literals)
        if isinstance(value, bytes):
            return redact_text(value.decode("utf-8", "backslashreplace"), self.literals)
        if depth >= 4 or isinstance(value, int | float | bool) or value is None:
            return value
        if isinstance(value, dict):
            return {k: self._value(k, v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [self._value(None, v, depth + 1) for v in value]
        return redact_text(repr(value), self.literals)  # anything else is rendered as its repr anyway


def known_secrets(settings: Settings) -> list[str]:
    """The secret values this process holds, masked wherever they turn up verbatim."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, SecretStr):
                secret = item.get_secret_value()
                found.append(secret)
                if name == "prefect_auth_string":  # `user:password`: the password alone too
                    found.append(secret.partition(":")[2])
    if settings.s3_secret:
        found.append(settings.s3_secret)
    return found


def format_exception(exc_info: ExcInfo) -> str:
    """A plain traceback without locals: the innermost frames of each exception in the chain, long
    lines cut, and the whole bounded (the head and the end, where the error is, are kept)."""
    exc_type, exc, tb = exc_info
    rendered = traceback.TracebackException(
        exc_type, exc, tb, limit=-MAX_TRACEBACK_FRAMES, capture_locals=False, compact=True
    )
    lines = "".join(rendered.format()).splitlines()
    if len(lines) > MAX_TRACEBACK_LINES:
        head, tail = 5, MAX_TRACEBACK_LINES - 6
        lines = [*lines[:head], f"... {len(lines) - head - tail} lines omitted ...", *lines[-tail:]]
    return "\n".join(lines)


def _cap_line(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else f"{line[:MAX_LINE_CHARS]}... ({len(line)} chars)"


def _cap_long_lines(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """Long lines cut only after redaction: a cut first could leave half a secret unmatched."""
    for key in ("event", "exception"):
        value = event_dict.get(key)
        if isinstance(value, str) and len(value) > MAX_LINE_CHARS:
            event_dict[key] = "\n".join(_cap_line(line) for line in value.split("\n"))
    return event_dict


def _capture_exc_info(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """`log.exception(...)` means "the exception being handled": resolve it now, on the caller's
    thread, because the writer thread has none."""
    exc_info = event_dict.get("exc_info")
    if exc_info and not isinstance(exc_info, tuple | BaseException):
        current = sys.exc_info()
        if current[1] is None:
            del event_dict["exc_info"]
        else:
            event_dict["exc_info"] = current
    return event_dict


def _record_time(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """A stdlib record's own time (it is rendered later, on the writer thread), as TimeStamper writes it."""
    record = event_dict.get("_record")
    created = datetime.fromtimestamp(record.created if record is not None else time.time(), UTC)
    event_dict["timestamp"] = created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return event_dict


def _context_from_record(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """A stdlib record's caller context (request id, job id) as captured when it was queued."""
    record = event_dict.get("_record")
    context = record.__dict__.pop("_bl_context", None) if record is not None else None
    if context:
        return {**context, **event_dict}
    return event_dict


class BackgroundHandler(logging.handlers.QueueHandler):
    """Queues records untouched (no formatting on the caller's thread), with the caller's structlog
    context variables, which the writer thread cannot see. A full queue drops and counts.

    It carries the writer's formatter although it never formats: Prefect, once imported, keeps the
    root handlers only if one has a formatter and a public class name; otherwise it puts its own
    console handler at WARNING there and every INFO line of ours (the audit trail) is gone."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if not hasattr(record, "_logger"):  # structlog's own records merged their context already
            record._bl_context = structlog.contextvars.get_contextvars()
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                note = logging.LogRecord(
                    "bitinglip.logs", logging.WARNING, __file__, 0, "%d log records dropped", (self.dropped,), None
                )
                self.queue.put_nowait(note)
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class LineWriter(threading.Thread):
    """The one writer thread: takes every record waiting, renders each and writes them with one write
    and one flush. Under load (an access line per request) that is one system call for many lines,
    where a handler per record made two for each."""

    MAX_BATCH = 512
    _STOP = logging.LogRecord("bitinglip.logs", logging.INFO, __file__, 0, "stop", None, None)

    def __init__(self, records: queue.Queue[logging.LogRecord], formatter: logging.Formatter) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.records = records
        self.formatter = formatter
        self.stream = sys.stderr

    def run(self) -> None:
        while True:
            batch = [self.records.get()]
            while len(batch) < self.MAX_BATCH:
                try:
                    batch.append(self.records.get_nowait())
                except queue.Empty:
                    break
            lines = [self._render(record) for record in batch if record is not self._STOP]
            if lines:
                self._write("\n".join(lines) + "\n")
            if any(record is self._STOP for record in batch):
                return

    def _render(self, record: logging.LogRecord) -> str:
        try:
            return self.formatter.format(record)
        except Exception as exc:  # a record that cannot be rendered must not stop the writer
            return f"[unrenderable log record from {record.name}: {type(exc).__name__}]"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # a stream that is closed or gone must not end the writer; there is nobody to tell
            pass

    def stop(self, timeout_s: float = 30.0) -> None:
        """Writes what is still queued, then ends (a full queue of records with tracebacks takes seconds)."""
        try:
            self.records.put(self._STOP, timeout=timeout_s)
        except queue.Full:
            return
        self.join(timeout_s)


_writer: LineWriter | None = None


def _stop_writer() -> None:
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


def configure_logging(settings: Settings, process: str, console_level: str | None = None) -> None:
    """`console_level` raises the bar for this process's console only (the CLI shows progress bars,
    not Prefect's INFO chatter; those lines still reach the run's log in the Prefect UI)."""
    global _writer
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    level = structlog.processors.add_log_level
    module = structlog.processors.CallsiteParameterAdder({structlog.processors.CallsiteParameter.MODULE})
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _capture_exc_info,
            level,
            structlog.processors.TimeStamper(fmt="iso"),
            module,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.ExceptionRenderer(format_exception),
            Redactor(known_secrets(settings)),
            _cap_long_lines,
            renderer,
        ],
        foreign_pre_chain=[_context_from_record, level, _record_time, module, structlog.stdlib.ExtraAdder()],
    )
    _stop_writer()
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
    handler = BackgroundHandler(records)
    handler.setFormatter(formatter)
    if console_level is not None:
        handler.setLevel(console_level.upper())
    _writer = LineWriter(records, formatter)
    _writer.start()
    atexit.unregister(_stop_writer)
    atexit.register(_stop_writer)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    structlog.contextvars.bind_contextvars(process=process)
    # alembic.runtime.plugins: seven "setup plugin" lines from every process that opens the database
    for noisy in ("httpx", "httpcore", "uvicorn.access", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
