"""Inbound webhooks: verify a platform's signed delivery, then read its payload as events.

``POST /v1/webhooks/<source>`` serves every source of the live catalogue's ``sources:`` section
(policies/catalogue.py, ``Source``). :func:`read` takes one delivery from its raw bytes to the events it
carries, in this order, each step with its own answer:

1. the source is in the catalogue, or 404 ``source_not_found``;
2. its secret is in the environment variable the catalogue names, or 503 ``source_not_configured``
   (an operator problem: the sender did nothing wrong, and its retries will get through once it is set);
3. the delivery is signed per Standard Webhooks (https://www.standardwebhooks.com/) with that secret,
   within :data:`REPLAY_WINDOW_S` of the service's clock, or 401 ``invalid_signature`` /
   ``timestamp_out_of_window``;
4. the body fits the source's ``format``, or 422 naming the field.

The signature is the authentication: a platform cannot be given one of the service's API keys per
customer account, and a per-source secret that only that platform and the service share proves both
who sent the body and that nobody changed it on the way (docs/webhooks.md#authentication).

Everything here is pure (no I/O: the environment and the clock are passed in), so a new platform is a
function from :class:`Inbound` to :class:`Mapped`, added to :data:`MAPPINGS` and to the ``format``
names that ``Source`` accepts.

Repeats: every event gets an ``event_id`` derived from the delivery's id (``webhook-id``, or
``svix-id``), unless the generic payload gave its own, so the store's dedupe makes a redelivery a
duplicate (docs/events.md#repeats-event_id-and-order_id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import structlog
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from app.errors import ApiError, InvalidInput, NotFound, invalid_input
from app.schemas import MAX_TEXT, EventBatchIn, EventIn, EventsAccepted, EventsBody, Id, Timestamp
from policies.catalogue import Catalogue, Source

log = structlog.get_logger("nba.webhooks")

# Standard Webhooks' recommended tolerance, both ways: older is a replay, newer a clock that is wrong.
REPLAY_WINDOW_S: Final = 300
_UNIX_SECONDS = re.compile(r"^[0-9]{1,12}$")


class SignatureInvalid(ApiError):
    """The delivery is not signed with the source's secret, or not within the replay window (401)."""

    status, code = 401, "invalid_signature"


class SourceNotConfigured(ApiError):
    """The source's secret variable is unset or not a secret: the operator's to fix (503)."""

    status, code = 503, "source_not_configured"


class WebhookAccepted(EventsAccepted):
    """What became of a delivery: ``accepted + duplicates + ignored`` is the number of events it held."""

    ignored: int = Field(0, description="Events the source's format does not map (see reason).")
    reason: str | None = Field(None, description="Why events were ignored; only when some were.")


@dataclass(frozen=True, slots=True)
class Inbound:
    """One verified delivery, as a mapping sees it."""

    source: str  # the source's name in the catalogue
    spec: Source
    delivery_id: str  # webhook-id (or svix-id): the same on every retry of the delivery
    payload: Any  # the body, parsed from JSON
    now_ms: int

    def event_id(self, index: int | None = None) -> str:
        """The id that makes a retry of this delivery (or of its ``index``-th event) a duplicate."""
        suffix = "" if index is None else f":{index}"
        event_id = f"{self.source}:{self.delivery_id}{suffix}"
        if len(event_id) <= 128 and event_id.isprintable():
            return event_id
        # Ids are 1 to 128 printable characters; a delivery id may be longer or odd.
        digest = hashlib.sha256(self.delivery_id.encode()).hexdigest()[:40]
        return f"{self.source}:{digest}{suffix}"


@dataclass(frozen=True, slots=True)
class Mapped:
    """What a delivery holds: the events to apply, and how many more it held that are ignored, and why."""

    events: EventIn | EventBatchIn | None
    ignored: int = 0
    reason: str | None = None

    def answer(self, ingested: EventsAccepted | None) -> WebhookAccepted:
        accepted, duplicates = (ingested.accepted, ingested.duplicates) if ingested is not None else (0, 0)
        return WebhookAccepted(
            accepted=accepted, duplicates=duplicates, ignored=self.ignored, reason=self.reason
        )


def read(
    catalogue: Catalogue,
    name: str,
    environ: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_s: float,
) -> Mapped:
    """The events of one delivery to source ``name``; raises the errors listed in the module docstring."""
    spec = catalogue.sources.get(name)
    if spec is None:
        # The sources that do exist are not listed: the caller is not authenticated yet.
        raise NotFound(
            f"no webhook source {name!r}: sources are declared in the catalogue's sources: section, "
            "and the platform's webhook URL ends with the source's name (see docs/webhooks.md)",
            code="source_not_found",
        )
    webhook = _webhook(name, spec, environ)
    delivery_id, text = verify(webhook, headers, body, now_s=now_s, source=name)
    inbound = Inbound(name, spec, delivery_id, _json(text), int(now_s * 1000))
    return MAPPINGS[spec.format](inbound)


def _webhook(name: str, spec: Source, environ: Mapping[str, str]) -> Webhook:
    # The variable is named, its value never (nor in logs: the errors are raised from None).
    secret = environ.get(spec.secret, "").strip()
    if not secret:
        log.warning("webhook_source_not_configured", source=name, variable=spec.secret)
        raise SourceNotConfigured(
            f"webhook source {name!r} is not configured on the service: the environment variable "
            f"{spec.secret}, which holds its signing secret, is not set. Nothing was applied; the "
            "sender's retries will be accepted once an operator sets it and restarts the service"
        )
    try:
        return Webhook(secret)
    except (ValueError, EmptyWebhookSecretError):
        log.warning("webhook_secret_invalid", source=name, variable=spec.secret)
        raise SourceNotConfigured(
            f"webhook source {name!r} is not configured on the service: the environment variable "
            f"{spec.secret} does not hold a Standard Webhooks secret (whsec_ followed by base64, as the "
            "platform shows it). Nothing was applied; an operator must fix the variable"
        ) from None


def verify(
    webhook: Webhook, headers: Mapping[str, str], body: bytes, *, now_s: float, source: str = ""
) -> tuple[str, str]:
    """``(delivery id, body text)`` of a delivery signed with ``webhook``'s secret within the window.

    Headers are ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` (Standard Webhooks) or the
    same with ``svix-`` (Resend and other Svix senders). The window is checked on the service's clock
    (``now_s``), not the wall clock that ``Webhook.verify`` reads; the signature is the package's own
    ``Webhook.sign``, compared in constant time against each of the space-separated ``v1,`` signatures
    (several while a secret is being rotated).
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    svix = any(key.startswith("svix-") for key in lowered)
    family = "svix" if svix and not any(key.startswith("webhook-") for key in lowered) else "webhook"
    given = {part: lowered.get(f"{family}-{part}", "").strip() for part in ("id", "timestamp", "signature")}
    msg_id, timestamp, signatures = given["id"], given["timestamp"], given["signature"]
    if missing := ", ".join(f"{family}-{part}" for part, value in given.items() if not value):
        raise _refused(
            source,
            "missing_headers",
            f"the delivery is not signed (missing: {missing}); send webhook-id, webhook-timestamp and "
            "webhook-signature (Standard Webhooks), or svix-id, svix-timestamp and svix-signature",
        )
    if not _UNIX_SECONDS.match(timestamp):
        raise _refused(
            source, "bad_timestamp", f"{family}-timestamp must be whole seconds since 1970-01-01 (Unix time)"
        )
    age_s = now_s - int(timestamp)
    if abs(age_s) > REPLAY_WINDOW_S:
        when = f"{age_s:.0f}s old" if age_s > 0 else f"{-age_s:.0f}s ahead of the service's clock"
        raise _refused(
            source,
            "timestamp_out_of_window",
            f"{family}-timestamp is {when}; deliveries are accepted within {REPLAY_WINDOW_S}s either way, "
            "so that a captured delivery cannot be replayed later (check the sender's clock)",
            code="timestamp_out_of_window",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the body is not valid JSON (not UTF-8 at byte {exc.start}); send a JSON object",
            code="invalid_json",
        ) from None
    expected = webhook.sign(msg_id, datetime.fromtimestamp(int(timestamp), UTC), text).encode()
    if not any(hmac.compare_digest(expected, given.encode()) for given in signatures.split()):
        raise _refused(
            source,
            "signature_mismatch",
            f"{family}-signature does not match the body: the delivery was not signed with this source's "
            "secret, or the body was changed after signing (sign the exact bytes sent)",
        )
    return msg_id, text


def _refused(source: str, why: str, detail: str, *, code: str | None = None) -> SignatureInvalid:
    log.info("webhook_refused", source=source, reason=why)
    return SignatureInvalid(detail, code=code)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the body is not valid JSON ({exc.msg} at character {exc.pos}); send a JSON object",
            code="invalid_json",
        ) from None


def _validated(adapter: TypeAdapter[Any], value: Any, *at: str | int) -> Any:
    """``value`` through ``adapter``; a misfit is a 422 with paths into the body, below ``at``."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        errors = exc.errors()
        raise invalid_input({**error, "loc": ("body", *at, *error["loc"])} for error in errors) from None


# ---------------------------------------------------------------------------------------------------
# generic: the service's own event shape, as POST /v1/events takes it
# ---------------------------------------------------------------------------------------------------

_EVENTS: TypeAdapter[EventIn | EventBatchIn] = TypeAdapter(EventsBody)


def generic(inbound: Inbound) -> Mapped:
    """One event or ``{"events": [...]}``, checked exactly as ``POST /v1/events`` checks them. An event
    without ``event_id`` gets ``<source>:<delivery id>`` (``:<index>`` in a batch)."""
    body = _validated(_EVENTS, inbound.payload)
    if isinstance(body, EventBatchIn):
        events = [
            event if event.event_id else event.model_copy(update={"event_id": inbound.event_id(index)})
            for index, event in enumerate(body.events)
        ]
        return Mapped(body.model_copy(update={"events": events}))
    assert isinstance(body, EventIn)
    return Mapped(body if body.event_id else body.model_copy(update={"event_id": inbound.event_id()}))


# ---------------------------------------------------------------------------------------------------
# resend: https://resend.com/docs/dashboard/webhooks/event-types
# ---------------------------------------------------------------------------------------------------

# Resend's event type -> the event it becomes. Any type not here is ignored (202, "ignored": 1).
RESEND_EVENTS: Final[Mapping[str, str]] = {
    "email.sent": "email_sent",
    "email.delivered": "email_delivered",
    "email.opened": "email_open",
    "email.clicked": "email_click",
    "email.bounced": "email_bounced",
    # Marked as spam: the strongest "stop emailing me" there is. Resend has no per-email unsubscribe
    # event; its contact.updated carries no tags, so no customer id (RESEND_IGNORED).
    "email.complained": "unsubscribe",
    "email.failed": "email_failed",
    "email.suppressed": "email_suppressed",
}
RESEND_IGNORED: Final[Mapping[str, str]] = {
    "email.scheduled": "a step before sending; email.sent follows",
    "email.delivery_delayed": "a temporary state; email.delivered, email.bounced or email.failed follows",
    "email.received": "an email received by Resend, not one sent to a customer",
}
_RESEND_IGNORED_PREFIXES: Final = {
    "contact.": "contacts carry no tags, so no customer id; send their changes with the generic format",
    "domain.": "about the sending domain, not a customer",
    "suppression.": "about an address, with no customer id; email.bounced and email.complained are mapped",
}


class _Lenient(BaseModel):
    # Resend adds fields over time; those not read here are not checked either.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _ResendType(_Lenient):
    type: str = Field(min_length=1, max_length=128)


def _tag_map(value: Any) -> Any:
    # Resend sends tags as {"name": "value"}; the [{"name": ..., "value": ...}] of its sending API is
    # read the same way.
    if isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in value):
        return {t["name"]: t.get("value") for t in value}
    return value


class _ResendClick(_Lenient):
    link: str | None = None


class _ResendBounce(_Lenient):
    type: str | None = Field(None, max_length=64)


class _ResendEmail(_Lenient):
    email_id: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    tags: Annotated[dict[str, Any], BeforeValidator(_tag_map)] = Field(default_factory=dict)
    click: _ResendClick | None = None
    bounce: _ResendBounce | None = None


class _ResendEmailEvent(_Lenient):
    type: str
    created_at: Timestamp
    data: _ResendEmail


_RESEND_TYPE = TypeAdapter(_ResendType)
_RESEND_EVENT = TypeAdapter(_ResendEmailEvent)
_ID: TypeAdapter[str] = TypeAdapter(Id)


def resend(inbound: Inbound) -> Mapped:
    """One Resend event: the customer id is the email's tag ``spec.customer_tag``; the event time is
    ``created_at`` (a time ahead of the service's clock counts as now: the signature's timestamp already
    holds the two clocks within :data:`REPLAY_WINDOW_S`)."""
    resend_type = _validated(_RESEND_TYPE, inbound.payload).type
    event_type = RESEND_EVENTS.get(resend_type)
    if event_type is None:
        why = RESEND_IGNORED.get(resend_type) or next(
            (why for prefix, why in _RESEND_IGNORED_PREFIXES.items() if resend_type.startswith(prefix)),
            "not a type this service maps",
        )
        return Mapped(
            None,
            ignored=1,
            reason=f"resend event type {resend_type!r} is ignored ({why}); see docs/webhooks.md#resend",
        )
    event: _ResendEmailEvent = _validated(_RESEND_EVENT, inbound.payload)
    tag = inbound.spec.customer_tag
    if tag not in event.data.tags:
        problem = (
            f"the email has no tag {tag!r}: tag every email sent to a customer with {tag}=<customer id> "
            f"(source {inbound.source!r} reads the customer id from it)"
        )
        raise invalid_input([{"loc": ("body", "data", "tags", tag), "msg": problem}])
    customer_id = _validated(_ID, event.data.tags[tag], "data", "tags", tag)
    time_ms = min(int(event.created_at.timestamp() * 1000), inbound.now_ms)
    properties: dict[str, Any] = {}
    if event.data.email_id is not None:
        properties["email_id"] = event.data.email_id
    if event_type == "unsubscribe":
        properties["channel"] = "email"
    if event.data.click is not None and event.data.click.link is not None:
        properties["link"] = event.data.click.link[:MAX_TEXT]
    if event.data.bounce is not None and event.data.bounce.type is not None:
        properties["bounce_type"] = event.data.bounce.type
    return Mapped(
        EventIn.model_validate(
            {
                "event_id": inbound.event_id(),
                "customer_id": customer_id,
                "type": event_type,
                "timestamp": datetime.fromtimestamp(time_ms / 1000, UTC).isoformat(),
                "properties": properties,
            }
        )
    )


MAPPINGS: Final[Mapping[str, Callable[[Inbound], Mapped]]] = {"generic": generic, "resend": resend}
