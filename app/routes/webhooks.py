from __future__ import annotations

import os
from typing import Any

import structlog
from fastapi import APIRouter, Request

from app import inbound
from app.errors import documented
from app.inbound import WebhookAccepted
from app.routes.deps import ServicesDep

log = structlog.get_logger("nba.webhooks")

# No API key here: the signature is the authentication (app/inbound.py, docs/webhooks.md).
router = APIRouter(prefix="/v1", tags=["webhooks"])

_HEADERS = [
    {
        "name": f"{family}-{part}",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": f"{what} Send the webhook-* headers (Standard Webhooks) or the svix-* ones (Resend).",
    }
    for family in ("webhook", "svix")
    for part, what in (
        ("id", "The delivery's id, the same on every retry of it; events take their event_id from it."),
        ("timestamp", "When it was signed, in Unix seconds; at most 300s away from the service's clock."),
        ("signature", "Space-separated 'v1,<base64 HMAC-SHA256>' of '<id>.<timestamp>.<body>'."),
    )
]
_EXAMPLES = {
    "generic": {
        "summary": "format: generic (the body of POST /v1/events)",
        "value": {"customer_id": "c-42", "type": "webinar_attended", "properties": {"webinar": "w-7"}},
    },
    "resend": {
        "summary": "format: resend",
        "value": {
            "type": "email.clicked",
            "created_at": "2026-11-22T10:00:00.000Z",
            "data": {
                "email_id": "56761188-7520-42d8-8898-ff6fc54ce618",
                "to": ["someone@example.com"],
                "tags": {"customer_id": "c-42"},
                "click": {"link": "https://shop.example.com/p/sku-1"},
            },
        },
    },
}
_OPENAPI: dict[str, Any] = {
    "parameters": _HEADERS,
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}, "examples": _EXAMPLES}},
    },
}


@router.post(
    "/webhooks/{source}",
    status_code=202,
    responses=documented(401, 404, 413, 415, 422, 503),
    response_model_exclude_none=True,
    summary="Receive a signed webhook from a marketing platform",
    openapi_extra=_OPENAPI,
)
async def post_webhook(source: str, request: Request, services: ServicesDep) -> WebhookAccepted:
    """Verify the delivery's signature with the source's secret, read its events in the source's format
    (the catalogue's ``sources:``), and apply them. No API key: the signature is the authentication.
    A 202 means the events are in the store; a retry of the same delivery is counted as duplicates."""
    body, now_s = await request.body(), services.clock()
    mapped = inbound.read(services.catalogues.live, source, os.environ, request.headers, body, now_s=now_s)
    answer = mapped.answer(await services.ingest(mapped.events) if mapped.events is not None else None)
    log.info("webhook", source=source, **answer.model_dump(exclude={"reason"}))
    return answer
