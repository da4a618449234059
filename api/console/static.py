"""The built console (web/dist) at /ui: static files with a single-page-app fallback, and `/` sends
people there. Node is needed only to build it; when it has not been built, /ui says how."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_DIST = PROJECT_DIR / "web" / "dist"
# Vite names what it emits under assets/ by content hash: a changed file is a new URL, so those may be
# cached for good; everything else (index.html above all) is revalidated on every load.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# PrimeVue injects its theme as <style> elements, hence 'unsafe-inline' for styles (not scripts).
CONSOLE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


async def root(request: Request) -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


def is_page(path: str) -> bool:
    """A client-side route (e.g. jobs/123), as opposed to a file: no dot-segments, no extension."""
    parts = PurePosixPath(path).parts
    return ".." not in parts and "." not in (parts[-1] if parts else "") and not path.startswith("assets")


class ConsoleFiles(StaticFiles):
    """StaticFiles (which refuses any path resolving outside the folder) plus: unknown pages get
    index.html so deep links and reloads work, and caching headers by kind of file."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or not is_page(path):
                raise
            response = await super().get_response("index.html", scope)
            path = "index.html"
        immutable = path.startswith("assets/") and response.status_code in (200, 304)
        response.headers["Cache-Control"] = IMMUTABLE if immutable else REVALIDATE
        response.headers.update(CONSOLE_HEADERS)
        return response


def not_built_page() -> HTMLResponse:
    """Says how to build, without naming a path on the server (anyone may ask)."""
    body = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>BitingLip console</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>The console has not been built</h1>
<p>The gateway serves the console from its build folder (<code>BITINGLIP_CONSOLE_DIR</code>, by default
<code>web/dist</code> in the project), which has no <code>index.html</code>. Build it once (Node.js 20+ is
needed for the build only):</p>
<pre>cd web &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p><code>make setup</code> (and so <code>make up</code>) does this for you. The API works without it:
see <a href="/docs">/docs</a>.</p></body></html>"""
    return HTMLResponse(body, status_code=503, headers={"Cache-Control": REVALIDATE})


class Console:
    """The /ui mount: the files when built, else the page that says how to build them (checked per
    request, so building while the gateway runs is enough)."""

    def __init__(self, dist: Path) -> None:
        self.dist = dist
        self.files = ConsoleFiles(directory=dist, html=True, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (self.dist / "index.html").is_file():
            await not_built_page()(scope, receive, send)
            return
        await self.files(scope, receive, send)
