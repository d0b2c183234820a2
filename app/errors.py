"""Every error the API answers, in one shape, mapped to HTTP in one place.

::

    ApiError                       an answer other than success, with a status and a snake_case code
    ├── InvalidInput (422)         the body or a parameter does not fit; ``fields`` names each problem
    ├── Unauthorized (401)         no API key, or an unknown one
    ├── Forbidden (403)            the key's scope does not allow this call
    ├── NotFound (404)             the customer (or other resource) does not exist
    ├── PayloadTooLarge (413)      the body is over NBA_MAX_BODY_BYTES
    └── UnsupportedMediaType (415) the body is not application/json

Errors of the packages below are translated here too: ``StoreUnavailable`` is a 503 with
``Retry-After``, ``IdentityConflict`` a 409. Anything else is a bug: it is logged with its traceback
and answered 500 ``internal_error`` with the request id, never swallowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.logging import current_request_id
from app.metrics import route_template
from app.schemas import ErrorBody
from feature_store import IdentityConflict, StoreUnavailable

log = structlog.get_logger("nba.errors")


class ApiError(Exception):
    status = 400
    code = "bad_request"
    headers: Mapping[str, str] | None = None

    def __init__(self, detail: str, *, code: str | None = None, fields: list[dict[str, str]] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.fields = fields
        if code is not None:
            self.code = code


class InvalidInput(ApiError):
    status, code = 422, "invalid_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


_UNION_TAGS = {"batch", "single"}  # the tags of POST /v1/events' one-or-batch body (schemas.EventsBody)


def field_path(loc: Sequence[Any]) -> str:
    """``("body", "batch", "events", 3, "type")`` -> ``events[3].type``.

    Only the leading ``body`` and the union tag right after it are dropped: deeper down they are names
    the client chose (a property called ``body``), and dropping them would point at the wrong field.
    """
    parts = list(loc)
    if parts[:1] == ["body"]:
        parts = parts[1:]
        if parts[:1] and parts[0] in _UNION_TAGS:
            parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for "the key, not its value": the path already names it
            out += f".{part}" if out else str(part)
    return out or "body"


def invalid_input(errors: Iterable[Any]) -> InvalidInput:
    fields = []
    for error in errors:
        message = str(error["msg"]).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            # FastAPI's message is a bare "JSON decode error"; the decoder's own says what and where.
            reason = str(error.get("ctx", {}).get("error") or message.removeprefix("Invalid JSON: "))
            loc = tuple(error.get("loc", ()))
            where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            raise InvalidInput(
                f"the body is not valid JSON ({reason}{where}); send a JSON object", code="invalid_json"
            )
        fields.append({"field": field_path(error["loc"]), "problem": message})
    summary = "; ".join(f"{f['field']}: {f['problem']}" for f in fields[:5])
    more = f" (and {len(fields) - 5} more)" if len(fields) > 5 else ""
    return InvalidInput(f"the request does not fit the schema: {summary}{more}", fields=fields)


def _body(
    status: int,
    code: str,
    detail: str,
    fields: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    content: dict[str, Any] = {"error": code, "detail": detail}
    if fields is not None:
        content["fields"] = fields
    return JSONResponse(content, status_code=status, headers=headers)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error answers a route can give."""
    return {status: {"model": ErrorBody} for status in statuses}


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}


def answer(exc: ApiError) -> JSONResponse:
    """The answer to an :class:`ApiError`, wherever it is raised (also app/routes/decisions.py)."""
    return _body(exc.status, exc.code, exc.detail, exc.fields, exc.headers)


def install(app: FastAPI, *, retry_after_s: int) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return answer(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        try:
            error = invalid_input(exc.errors())
        except InvalidInput as raised:
            error = raised
        return _body(error.status, error.code, error.detail, error.fields)

    @app.exception_handler(ValidationError)
    async def _pydantic(request: Request, exc: ValidationError) -> JSONResponse:
        return await _validation(request, RequestValidationError(exc.errors()))

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store_unavailable", error=str(exc))
        return _body(
            503,
            "store_unavailable",
            f"the profile store is unavailable, so nothing was acknowledged; retry after {retry_after_s}s "
            "(a write whose reply was lost may have been applied: with event_id set, a retry is safe)",
            headers={"Retry-After": str(retry_after_s)},
        )

    @app.exception_handler(IdentityConflict)
    async def _conflict(_: Request, exc: IdentityConflict) -> JSONResponse:
        return _body(
            409,
            "identity_conflict",
            f"anonymous_id {exc.anonymous_id!r} is already linked to another customer; an anonymous id "
            "links to one customer only (use a fresh anonymous id for a new visitor)",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; see /docs for the API"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            allowed = (exc.headers or {}).get("Allow", "")
            detail = (
                f"{request.method} is not allowed on {request.url.path}; use {allowed or 'another method'}"
            )
        return _body(exc.status_code, code, detail, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The route's template, not the path: a path holds customer ids (app/logging.py).
        return unexpected(route_template(request.scope), request.method)


def unexpected(route: str, method: str) -> JSONResponse:
    """The answer to an exception nothing expected, logged with its traceback: called while it is being
    handled (by the handler above, and by the decisions' fast lane, app/routes/decisions.py)."""
    log.exception("unhandled_error", route=route, method=method)
    # Bound by app/logging.py's RequestIds, which this answer (made further out) does not pass through.
    request_id = current_request_id() or ""
    return _body(
        500,
        "internal_error",
        f"an unexpected error occurred and was logged{f' (request {request_id})' if request_id else ''}; "
        "please report it",
        headers={"X-Request-ID": request_id} if request_id else None,
    )
