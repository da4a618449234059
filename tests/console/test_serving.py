"""The console and the docs as the gateway serves them, over real HTTP: `/` -> /ui, the SPA fallback,
caching headers, no way out of web/dist, the page that says how to build when nothing is built,
Swagger UI from the gateway's own files, and the committed schema the typed client comes from."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from api.console import schema_export
from api.console.schemas import JobEvent
from tests.console.conftest import WEB
from tests.platform_harness import Platform
from tests.security.conftest import envelope


def raw_get(gateway: str, target: str) -> tuple[int, bytes]:
    """A GET sent byte for byte (HTTP clients normalise `..` and encodings away before sending)."""
    url = urlsplit(gateway)
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_root_redirects_to_the_console_and_pages_fall_back_to_the_app(platform: Platform, console_dist: Path) -> None:
    anonymous = platform.client(key="")
    root = anonymous.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    index = (console_dist / "index.html").read_bytes()
    for page in ("/ui/", "/ui/jobs", "/ui/jobs/8f7c2b2e-0000-4000-8000-000000000000", "/ui/login?next=%2Fkeys"):
        response = anonymous.get(page)
        assert response.status_code == 200 and response.content == index, page
        assert response.headers["cache-control"] == "no-cache"
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
    asset = re.search(rb'src="(/ui/assets/[^"]+\.js)"', index)
    assert asset is not None
    script = anonymous.get(asset.group(1).decode())
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert anonymous.get(asset.group(1).decode(), headers={"If-None-Match": script.headers["etag"]}).status_code == 304
    envelope(anonymous.get("/ui/assets/missing-0000.js"), 404, "not_found_error")  # a file is never the app


@pytest.mark.parametrize(
    "target",
    [
        "/ui/../../etc/passwd",
        "/ui/../pyproject.toml",
        "/ui/..%2f..%2f..%2fetc%2fpasswd",
        "/ui/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/ui/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/ui/assets/..%2f..%2f..%2fpyproject.toml",
        "/ui/%252e%252e/%252e%252e/pyproject.toml",
        "/ui/..%5c..%5c..%5cpyproject.toml",
        "/ui/....//....//pyproject.toml",
        "/ui//etc/passwd",
        "/ui/%00/../../pyproject.toml",
        "/ui/swagger/../../../api/app.py",
    ],
)
def test_no_path_leaves_the_console_folder(platform: Platform, console_dist: Path, target: str) -> None:
    status, body = raw_get(platform.gateway, target)
    index = (console_dist / "index.html").read_bytes()
    assert status in (200, 400, 404), (target, status)
    assert status != 200 or body == index, target  # at most the app itself, for what looks like a page
    for secret in (b"root:", b"[build-system]", b"create_app", b"bitinglip"):
        assert secret not in body.lower() or body == index, (target, secret)


def test_without_a_build_the_gateway_starts_and_says_how_to_build(platform: Platform, tmp_path: Path) -> None:
    url = platform.start_extra_gateway("gateway-unbuilt", env={"BITINGLIP_CONSOLE_DIR": str(tmp_path / "none")})
    try:
        import httpx

        for page in ("/ui/", "/ui/models"):
            response = httpx.get(f"{url}{page}")
            assert response.status_code == 503 and "npm ci" in response.text and "npm run build" in response.text
            assert str(tmp_path) not in response.text  # an anonymous visitor learns no path on the server
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        platform.stop("gateway-unbuilt")


def test_docs_work_offline_with_the_bearer_scheme(platform: Platform, console_dist: Path) -> None:
    anonymous = platform.client(key="")
    page = anonymous.get("/docs")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "persistAuthorization" not in page.text  # a key given to "Authorize" stays out of localStorage
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/ui/swagger/") for s in sources), sources  # nothing from a CDN
    for source in sources:
        assert anonymous.get(source).status_code == 200, source
    schema = anonymous.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert schema["paths"]["/api/v1/tasks"]["post"]["security"] == [{"bearer": []}]
    for open_path, method in (
        ("/api/v1/auth/login", "post"),
        ("/health", "get"),
        ("/api/v1/results/signed/{path}", "get"),
    ):
        assert "security" not in schema["paths"][open_path][method], open_path


def test_committed_schema_and_typed_client_are_current(tmp_path: Path) -> None:
    """web/openapi.json is what create_app declares, and web/src/api/schema.d.ts is generated from it:
    after an API change, `python -m api.console.schema_export && (cd web && npm run schema)`."""
    committed = (WEB / "openapi.json").read_text()
    assert committed == schema_export.render(), "web/openapi.json is stale: run python -m api.console.schema_export"
    generator = WEB / "node_modules" / ".bin" / "openapi-typescript"
    assert generator.exists() and shutil.which("node"), "run `cd web && npm ci` (Node.js 20+)"
    out = tmp_path / "schema.d.ts"
    subprocess.run(
        [str(generator), "openapi.json", "--default-non-nullable", "false", "-o", str(out)],
        cwd=WEB,
        check=True,
        capture_output=True,
    )
    assert out.read_text() == (WEB / "src" / "api" / "schema.d.ts").read_text(), "run `cd web && npm run schema`"


def test_the_console_knows_every_field_of_a_job_event() -> None:
    """SSE payloads are not in the OpenAPI schema, so the TypeScript shape is written by hand: keep it whole."""
    source = (WEB / "src" / "stores" / "live.ts").read_text()
    interface = source.split("export interface JobEvent {", 1)[1].split("}", 1)[0]
    declared = set(re.findall(r"^\s+(\w+):", interface, re.M))
    assert declared == set(JobEvent.model_fields)
