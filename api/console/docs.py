"""/docs without the internet: Swagger UI's own files come from the console build (web/dist/swagger,
copied there from the swagger-ui-dist npm package), and the schema declares the bearer scheme, so
"Authorize" takes an API key or a login token (api/deps.py's BEARER)."""

from __future__ import annotations

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse

SWAGGER = "/ui/swagger"


async def swagger_ui(request: Request) -> HTMLResponse:
    """A plain route (no API dependency), as FastAPI's own /docs is. The key given to "Authorize" is
    not kept in the browser's storage (the console keeps its own per tab), and the page cannot be
    framed by another site while a key is in it."""
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="BitingLip gateway - API docs",
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
    )
    page.headers["X-Frame-Options"] = "DENY"
    page.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page
