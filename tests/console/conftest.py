"""Fixtures of the console suites: the built console (make setup builds it), two users with a
password and a key each, and a reader of the live event stream."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.platform_harness import Platform

WEB = Path(__file__).resolve().parents[2] / "web"
DIST = WEB / "dist"


@pytest.fixture(scope="session")
def console_dist() -> Path:
    """The console is built at setup; without it these tests fail saying how to build it."""
    if not (DIST / "index.html").is_file():
        pytest.fail(
            f"the console is not built ({DIST} has no index.html): "
            "run `make setup` or `cd web && npm ci && npm run build`"
        )
    return DIST


@dataclass(frozen=True)
class PullSource:
    """A model-shaped folder a pull may read (file:// under home/import)."""

    folder: Path
    size: int
    files: int

    @property
    def url(self) -> str:
        return f"file://{self.folder}"


PULL_FILES = {"config.json": 2_000, "weights-1.bin": 48 << 20, "weights-2.bin": 48 << 20, "tokenizer.json": 30_000}


@pytest.fixture
def pull_source(platform: Platform) -> Iterator[PullSource]:
    """Big enough that fetching it spans a few of the event stream's looks (about 100 MB)."""
    folder = platform.settings.home_dir / "import" / f"pull-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    for name, size in PULL_FILES.items():
        (folder / name).write_bytes(b"\0" * size)
    yield PullSource(folder, sum(PULL_FILES.values()), len(PULL_FILES))
    shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class User:
    username: str
    password: str
    key: str


@pytest.fixture(scope="module")
def users(platform: Platform) -> dict[str, User]:
    """Two plain users made by the admin through the API, each with a password and a key."""
    admin = platform.client()
    made = {}
    for name in ("alice", "bob"):
        username, password = f"{name}-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
        created = admin.post("/api/v1/users", json={"username": username, "password": password})
        assert created.status_code == 201, created.text
        key = admin.post("/api/v1/auth/keys", json={"username": username, "name": "console-test"})
        assert key.status_code == 201, key.text
        made[name] = User(username, password, key.json()["key"])
    return made


@dataclass
class EventReader:
    """Reads GET /api/v1/events in a thread, as a browser would, keeping every event seen."""

    gateway: str
    key: str
    params: dict[str, Any] = field(default_factory=dict)
    seen: list[tuple[str, Any]] = field(default_factory=list)
    status: int | None = None

    def __post_init__(self) -> None:
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._client = httpx.Client(
            base_url=self.gateway,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=httpx.Timeout(10, read=120),
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._client.stream("GET", "/api/v1/events", params=self.params) as response:
                self.status = response.status_code
                event, data = "", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line.removeprefix("event:").strip()
                    elif line.startswith("data:"):
                        data.append(line.removeprefix("data:").strip())
                    elif not line and event:
                        self._events.put((event, json.loads("\n".join(data))))
                        event, data = "", []
        except httpx.HTTPError:
            pass  # closed by the test

    def wait_for(self, match: Callable[[str, Any], bool], timeout: float = 120) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(item)
            if match(*item):
                return item
        raise AssertionError(f"no matching event in {timeout}s; saw {[e for e, _ in self.seen][-20:]}")

    def join_ended(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream is still open"

    def close(self) -> None:
        self._client.close()
        self._thread.join(10)


@pytest.fixture
def reader(platform: Platform) -> Iterator[Callable[..., EventReader]]:
    opened: list[EventReader] = []

    def open_stream(key: str, **params: Any) -> EventReader:
        r = EventReader(platform.gateway, key, params)
        opened.append(r)
        return r

    yield open_stream
    for r in opened:
        r.close()
