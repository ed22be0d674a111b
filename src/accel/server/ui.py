"""The dashboard (``/ui/``) and the API docs (``/docs``), both served from the package itself.

Registries often run air-gapped, so neither page may load anything from another origin: the dashboard
is three static files of ours (``server/ui/``), the docs are Swagger UI from the ``swagger-ui-bundle``
package, and a Content-Security-Policy makes the browser refuse anything else. The dashboard reads and
acts through the task API with the same authorisation as any client (see ``server/auth.py``).
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_DIR = Path(__file__).with_name("ui")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_UI_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# FastAPI's Swagger page starts Swagger UI with an inline script.
_DOCS_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def mount(app: FastAPI) -> None:
    """``/`` → ``/ui/``, the dashboard under ``/ui/``, ``/docs`` with its assets under ``/docs/assets``."""

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        # Browsers ask for it on every page, the API's JSON ones too; answering spares them a 404.
        return Response(status_code=204)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            # Swagger UI would otherwise send the spec to validator.swagger.io for its badge.
            swagger_ui_parameters={"validatorUrl": None},
        )

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")

    app.add_middleware(_SecurityHeaders)


class _SecurityHeaders:
    """Pure ASGI middleware adding the browser policies to /ui and /docs answers. Every other request
    (webhooks above all) passes straight through: Starlette's ``BaseHTTPMiddleware`` would cost each
    one a task and a stream wrapper."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path.startswith("/ui") or path.startswith("/docs")):
            await self.app(scope, receive, send)
            return
        policy = _DOCS_POLICY if path.startswith("/docs") else _UI_POLICY

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.update({**_SECURITY_HEADERS, "Content-Security-Policy": policy})
            await send(message)

        await self.app(scope, receive, with_headers)
