"""The key-management dashboard: one page and its assets, served on the public port.

The page is static: it signs in by asking for an API key, keeps it in the
browser's ``sessionStorage`` and calls the management API (SPEC §7) on the
same origin. Nothing here reads a key; the API authenticates every call.

Every answer carries a strict Content-Security-Policy (no inline script or
style, no other origin) and refuses framing; the assets are read once, when
the routes are built, and served from memory.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from ..denials import Denial, error_response

if TYPE_CHECKING:
    from ..pipeline import RequestContext
    from ..runtime import LocalHandler, Runtime

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
# The files under static/ that are served (the page itself is rendered from index.html).
ASSETS = ("app.js", "app.css", "chart.umd.min.js", "chart.js.LICENSE.md")
ALLOWED_METHODS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    cache_control: str


def _asset(body: bytes, name: str, cache_control: str) -> Asset:
    suffix = name[name.rfind(".") :]
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return Asset(body, CONTENT_TYPES.get(suffix, "application/octet-stream"), etag, cache_control)


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def render_page(*, base: str, api_prefix: str, key_prefix: str, rotation_days: int) -> bytes:
    """index.html with the settings the script needs, as attributes on <html> (no inline script)."""
    values = {
        "{{base}}": base,
        "{{api_prefix}}": api_prefix,
        "{{key_prefix}}": key_prefix,
        "{{rotation_days}}": str(rotation_days),
    }
    text = _read("index.html").decode("utf-8")
    for placeholder, value in values.items():
        text = text.replace(placeholder, html.escape(value, quote=True))
    return text.encode("utf-8")


class Dashboard:
    """Answers ``{path}``, ``{path}/`` and ``{path}/static/{asset}``."""

    def __init__(self, *, path: str, api_prefix: str, key_prefix: str, rotation_days: int):
        self.path = path
        page = render_page(
            base=path, api_prefix=api_prefix, key_prefix=key_prefix, rotation_days=rotation_days
        )
        # The page is small and may change with the config: always revalidate.
        self.page = _asset(page, "index.html", "no-cache")
        self.assets = {
            f"{path}/static/{name}": _asset(_read(name), name, "no-cache") for name in ASSETS
        }

    def find(self, path: str) -> Asset | None:
        if path in (self.path, self.path + "/"):
            return self.page
        return self.assets.get(path)

    async def __call__(self, request: web.BaseRequest, ctx: RequestContext) -> web.StreamResponse:
        asset = self.find(ctx.match_path)
        if asset is None:
            denial = Denial("resource_not_found")
            ctx.code = denial.code
            return self._secured(error_response(denial, ctx.request_id))
        if request.method not in ALLOWED_METHODS:
            denial = Denial(
                "method_not_allowed",
                {"allowed": list(ALLOWED_METHODS)},
                {"Allow": ", ".join(ALLOWED_METHODS)},
            )
            ctx.code = denial.code
            return self._secured(error_response(denial, ctx.request_id))
        headers = {
            "Cache-Control": asset.cache_control,
            "ETag": asset.etag,
            "X-Request-Id": ctx.request_id,
        }
        if asset.etag in _etags(request.headers.get("If-None-Match", "")):
            return self._secured(web.Response(status=304, headers=headers))
        response = web.Response(body=asset.body, headers=headers)
        response.content_type, _, charset = asset.content_type.partition("; charset=")
        if charset:
            response.charset = charset
        return self._secured(response)

    @staticmethod
    def _secured(response: web.StreamResponse) -> web.StreamResponse:
        response.headers.update(SECURITY_HEADERS)
        return response


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}


def dashboard_routes(runtime: Runtime) -> list[tuple[str, bool, LocalHandler]]:
    """The dashboard's local route, or none when ``dashboard.enabled`` is false."""
    config = runtime.config
    if not config.dashboard.enabled:
        return []
    dashboard = Dashboard(
        path=config.dashboard.path,
        api_prefix=config.management.path_prefix,
        key_prefix=config.keys.prefix,
        rotation_days=config.keys.rotation_days,
    )
    return [(config.dashboard.path, True, dashboard)]
