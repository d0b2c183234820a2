"""``POST /v1/decide`` and ``POST /v1/outcomes``; and :class:`FastDecide`, the way most decisions come in."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import errors
from app.auth import require
from app.errors import documented
from app.limits import is_json
from app.logging import bind_request_id, request_id, reset_request_id
from app.metrics import http_request
from app.routes.deps import ServicesDep
from app.schemas import DecideIn, DecideOut, OutcomesAccepted, OutcomesBody
from app.services import Services
from app.settings import Scope as KeyScope

router = APIRouter(prefix="/v1", tags=["decisions"], dependencies=[Depends(require(KeyScope.WEB))])
ROUTE = "/v1/decide"  # the fast lane's path, and its template in the HTTP metrics


@router.post(
    "/decide",
    response_model=DecideOut,
    responses=documented(401, 403, 413, 415, 422),
    summary="Choose what to show one customer at one placement now",
)
async def post_decide(body: DecideIn, services: ServicesDep) -> Any:
    """Within the decision budget, or the placement's fallback with ``fallback: true``."""
    return _answer(await services.decide(body))


def _answer(content: dict[str, Any]) -> Response:
    """A decision's answer, the same whichever way the request came (the route or FastDecide): what
    JSONResponse would send, encoded by orjson (as the decision records are). Keys that are not strings
    (a catalogue payload's, from YAML) become strings, as json.dumps makes them."""
    return Response(_encoded(content), media_type=_JSON.decode())


def _encoded(content: dict[str, Any]) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


_JSON = b"application/json"


@router.post(
    "/outcomes",
    status_code=202,
    responses=documented(401, 403, 404, 413, 415, 422, 503),
    summary="Report what became of a decision: impression, click, dismiss, conversion",
)
async def post_outcomes(body: OutcomesBody, services: ServicesDep) -> OutcomesAccepted:
    """One outcome (404 for an unknown decision), or ``{"outcomes": [...]}`` with per-item errors."""
    return await services.outcomes(body)


@router.get("/actions", summary="The catalogue as loaded")
async def get_actions(services: ServicesDep) -> dict[str, Any]:
    return services.catalogues.live.public()


class FastDecide:
    """The fast lane of ``POST /v1/decide``, the call a website makes on every page view: a well-formed
    request is answered here, in front of all the middleware (app/main.py ``Service``). It skips FastAPI's
    routing, dependency solving and body handling, which took a fifth of a decision's CPU, and the ten
    layers of middleware (each a coroutine and a wrapper of ``send``), 5% of its instructions
    (docs/performance.md).

    What those layers do for a request, the lane does for the requests it answers: the request id
    (app/logging.py: bound to its log lines, echoed in ``X-Request-ID``), the HTTP metric with this
    route's template (app/metrics.py), the answer to an unexpected exception (app/errors.py). Limits
    (app/limits.py) it need not repeat: it takes only JSON bodies within ``max_bytes``.

    The route above stays the contract: its OpenAPI entry, and every answer but those of
    ``Services.decide``. A request the lane does not take whole (a key that is missing, unknown or of too
    low a scope; a body that is not JSON, too large, or not a JSON object of the schema; a client gone
    while sending) is handed on to the full stack untouched, its body replayed, before anything was
    done for it: so its answer is the stack's own, as it was.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app  # the full stack: FastAPI's middleware and routes
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Called for ``POST /v1/decide`` only."""
        started = time.perf_counter()
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes or not message.get("more_body", False):
                break
        services: Services = scope["state"]["services"]
        body = None if size > self.max_bytes else _whole(services, scope, received)
        if body is None:
            await self.app(scope, _replay(received, receive), send)
            return
        rid = request_id(scope)
        token = bind_request_id(rid)
        status = 500
        try:
            try:
                content = await services.decide(body)
            except errors.ApiError as exc:
                response = errors.answer(exc)
                status = response.status_code
                await _send(response, rid, send)
            except Exception:
                await _send(errors.unexpected(ROUTE, "POST"), rid, send)
                raise  # as Starlette's ServerErrorMiddleware does, for the server to log it too
            else:
                # What _answer's Response sends, its headers in its order, and the request id: built
                # here, as for every page view.
                answer = _encoded(content)
                headers = [(b"content-length", b"%d" % len(answer)), (b"content-type", _JSON)]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                status = 200
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": answer})
        finally:
            http_request(ROUTE, "POST", status, time.perf_counter() - started)
        reset_request_id(token)


async def _send(response: Response, rid: str, send: Send) -> None:
    """``response`` with its ``X-Request-ID`` (which an unexpected error's answer carries already)."""
    headers = response.raw_headers
    if not any(k == b"x-request-id" for k, _ in headers):
        headers = [*headers, (b"x-request-id", rid.encode("latin-1"))]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def _whole(services: Services, scope: Scope, received: list[Message]) -> DecideIn | None:
    """The request, when it is one the lane takes whole (see FastDecide); else None."""
    if received[-1]["type"] != "http.request":
        return None
    content_type = authorization = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"authorization":
            authorization = value
    if content_type is None or not is_json(content_type.decode("latin-1")):
        return None
    key = authorization.decode("latin-1") if authorization else None
    if not services.keys.open and not services.keys.allows(key, KeyScope.WEB):
        return None
    # Parsed and validated in one pass by pydantic-core. Its JSON parser is stricter than the json
    # module FastAPI parses with (no NaN, no lone surrogates): what it refuses, the route answers.
    try:
        return DecideIn.model_validate_json(b"".join(m.get("body", b"") for m in received))
    except ValidationError:
        return None


def _replay(received: list[Message], receive: Receive) -> Receive:
    """``receive`` that hands out the messages already received again, then goes on with the client's."""
    pending = list(received)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
