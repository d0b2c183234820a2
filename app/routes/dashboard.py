"""``GET /dashboard``: the live operations dashboard, a static page that draws the admin API's data.

The page holds no data and no secret: it is served without a key, and everything it shows it fetches
with one, from endpoints that need the ``admin`` scope (``/v1/admin/dashboard/data``, ``/v1/models``,
``/v1/reports/uplift``). A browser cannot add an ``Authorization`` header to the navigation that opens a
page, so the page asks for the key when the service answers 401, keeps it in ``sessionStorage`` (this tab
only, gone when the tab closes; never a cookie, so no other site can make the browser use it) and sends
it as ``Authorization: Bearer`` on its data requests. With no keys configured the service is open
(loopback only) and the page never asks. docs/dashboard.md says what each chart computes.

Assets are a fixed list of files in ``app/dashboard/`` (package data), read once, served with their
content type, a strong ``ETag`` and ``Cache-Control: no-cache``: the browser keeps them and asks again
on each load, getting a 304 until the service is upgraded.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

from fastapi import APIRouter, Request, Response

from app.errors import NotFound

router = APIRouter(tags=["operations"])

_TYPES: Final = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "compute.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page loads only its own scripts and styles and talks only to this service; no framing (a framed
# page could be tricked into clicks while it holds a key).
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' "
    "data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    etag: str
    media_type: str


@functools.cache
def _asset(name: str) -> _Asset:
    body = resources.files("app").joinpath("dashboard", name).read_bytes()
    return _Asset(body, f'"{hashlib.sha256(body).hexdigest()[:32]}"', _TYPES[name])


def _serve(name: str, request: Request, headers: dict[str, str]) -> Response:
    asset = _asset(name)
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        **headers,
    }
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get(
    "/dashboard",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "The dashboard page (it holds no data)."}},
    summary="Live operations dashboard",
)
async def get_dashboard(request: Request) -> Response:
    """The operations dashboard for a browser. The page is public and empty; it asks for an ``admin`` key
    (unless the service has none) and fetches its data with it. See docs/dashboard.md."""
    return _serve("index.html", request, _PAGE_HEADERS)


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def get_dashboard_asset(name: str, request: Request) -> Response:
    if name not in _TYPES or name == "index.html":
        raise NotFound(f"the dashboard has no asset {name!r}")
    return _serve(name, request, {})
