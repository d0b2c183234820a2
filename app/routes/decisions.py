"""``POST /v1/decide`` and ``POST /v1/outcomes``; and :class:`FastDecide`, the way most decisions come in."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import errors
from app.auth import require
from app.errors import documented
from app.routes.deps import ServicesDep
from app.schemas import DecideIn, DecideOut, OutcomesAccepted, OutcomesBody
from app.services import Services
from app.settings import Scope as KeyScope

router = APIRouter(prefix="/v1", tags=["decisions"], dependencies=[Depends(require(KeyScope.WEB))])


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
    return Response(orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS), media_type="application/json")


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
    """ASGI middleware: a well-formed ``POST /v1/decide`` answered without FastAPI's routing, dependency
    solving and body handling, which took a fifth of a decision's CPU (docs/performance.md).

    The route above stays the contract: its OpenAPI entry, and every answer but those of
    ``Services.decide``. A request this path does not take whole (a key that is missing, unknown or of
    too low a scope; a body that is not a JSON object of the schema; a client gone while sending) is handed
    on to it untouched, its body replayed, before anything was done for it: so the errors are FastAPI's
    own, as they were. Installed innermost, so the request id, the HTTP metrics (with this route's
    template) and the body limits apply as to any request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = next(r for r in router.routes if isinstance(r, APIRoute) and r.path == "/v1/decide")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/decide" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        services: Services = scope["state"]["services"]
        body = _whole(services, scope, received)
        if body is None:
            await self.app(scope, _replay(received, receive), send)
            return
        scope["route"] = self.route  # what the router would record: HttpMetrics labels by it
        response: Response
        try:
            response = _answer(await services.decide(body))
        except errors.ApiError as exc:
            response = errors.answer(exc)
        await response(scope, receive, send)


def _whole(services: Services, scope: Scope, received: list[Message]) -> DecideIn | None:
    """The request, when it is one this path takes whole (see FastDecide); else None."""
    if received[-1]["type"] != "http.request":
        return None
    if not services.keys.open:
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if not services.keys.allows(authorization.decode("latin-1") if authorization else None, KeyScope.WEB):
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
