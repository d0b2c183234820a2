"""HTTP bodies: what clients send and what they get back (see ../shared/API.md and docs/api.md)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StringConstraints,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from feature_store import Profile
from feature_store.events import TYPES_WITH_EFFECTS, effect
from feature_store.profile import WINDOWS, iso

MAX_BATCH = 1000
MAX_PROPERTIES = 64
MAX_LIST = 32
MAX_TEXT = 1024


def printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must contain printable characters only (no control characters or line breaks)")
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(printable)]


def _scalar(value: Any) -> bool:
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ValueError(f"strings are limited to {MAX_TEXT} characters")
        return True
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    return value is None or isinstance(value, bool | int | float)


def _property_value(value: Any) -> Any:
    if _scalar(value):
        return value
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise ValueError(f"lists are limited to {MAX_LIST} values")
        if all(_scalar(item) for item in value):
            return value
    raise ValueError("must be a string, number, boolean, null, or a list of those (no nested objects)")


_SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
PropertyValue = Annotated[
    Any,
    PlainValidator(_property_value),
    WithJsonSchema(
        {"anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA, "maxItems": MAX_LIST}]}
    ),
]
PropertyName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
]
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]


# A date, then a time. pydantic alone would also read "1700000000" as Unix seconds (and a longer one as
# milliseconds): a numeric timestamp in quotes, which RFC 3339 is not and whose unit is a guess.
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _rfc3339(value: Any) -> Any:
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        raise ValueError("must be an RFC 3339 string with a time zone, e.g. 2026-11-22T10:00:00Z")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventFields(_Strict):
    """What an event says, whoever it is about."""

    event_id: Id | None = Field(None, description="Makes the event idempotent within the dedupe window.")
    type: EventType = Field(description="A well-known type (see docs/events.md) or your own.")
    timestamp: Timestamp | None = Field(
        None, description="RFC 3339 with a time zone; missing means now. At most 5 minutes ahead."
    )
    properties: Annotated[dict[PropertyName, PropertyValue], Field(max_length=MAX_PROPERTIES)] = Field(
        default_factory=dict,
        description=f"Scalars or lists of up to {MAX_LIST} scalars; strings up to {MAX_TEXT} characters.",
    )

    @field_validator("properties")
    @classmethod
    def _fits_type(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        event_type = info.data.get("type")
        if event_type in TYPES_WITH_EFFECTS:  # the others read no property
            effect(event_type, value)
        return value


class EventIn(EventFields):
    """One behavioural event. One of ``customer_id`` or ``anonymous_id`` is required."""

    customer_id: Id | None = Field(None, description="The known customer; wins when both ids are given.")
    anonymous_id: Id | None = Field(None, description="A visitor not yet known (cookie or device id).")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": "e-9f2",
                    "customer_id": "c-42",
                    "type": "add_to_cart",
                    "timestamp": "2026-11-22T10:00:00Z",
                    "properties": {"item_id": "sku-1", "price": 19.9, "quantity": 1},
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _has_an_id(self) -> EventIn:
        if self.customer_id is None and self.anonymous_id is None:
            raise ValueError("one of customer_id or anonymous_id is required")
        return self


class EventBatchIn(_Strict):
    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)]


def _one_or_many(key: str) -> Callable[[Any], str]:
    """Tells a body of one item from ``{key: [...]}`` of them, so errors name the shape that was sent."""

    def shape(value: Any) -> str:
        return "batch" if isinstance(value, dict) and key in value else "single"

    return shape


# POST /v1/events takes one event or {"events": [...]}; the shape of the body says which.
EventsBody = Annotated[
    Annotated[EventBatchIn, Tag("batch")] | Annotated[EventIn, Tag("single")],
    Discriminator(_one_or_many("events")),
]


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events applied by this call.")
    duplicates: int = Field(description="Repeats of events already applied within the dedupe window.")


class IdentityIn(_Strict):
    anonymous_id: Id
    customer_id: Id


class IdentityLinked(BaseModel):
    anonymous_id: str
    customer_id: str
    merged: bool = Field(description="Whether this call merged the visitor's history (false on a repeat).")


class ErrorBody(BaseModel):
    error: str = Field(description="A stable snake_case code.")
    detail: str = Field(description="What is wrong and how to fix it.")
    fields: list[dict[str, str]] | None = Field(None, description="On 422: each field and its problem.")


class TypeCountsOut(BaseModel):
    total: int
    last_at: datetime | None
    m30: int = Field(alias="30m")
    h24: int = Field(alias="24h")
    d7: int = Field(alias="7d")
    d30: int = Field(alias="30d")


class CartLineOut(BaseModel):
    item_id: str
    quantity: int
    price: float | None
    changed_at: datetime


class CartOut(BaseModel):
    items: list[CartLineOut]
    quantity: int
    value: float
    changed_at: datetime | None


class RecentEventOut(BaseModel):
    type: str
    timestamp: datetime
    properties: dict[str, Any]


class ConsentOut(BaseModel):
    granted: bool
    changed_at: datetime


class ProfileOut(BaseModel):
    id: str
    id_type: Literal["customer", "anonymous"]
    anonymous_ids: list[str] = Field(description="Anonymous ids linked to this customer.")
    stage: Literal["awareness", "consideration", "purchase", "retention", "loyalty", "lapsed"]
    first_seen: datetime | None
    last_seen: datetime | None
    orders: int
    revenue: float
    first_purchase: datetime | None
    last_purchase: datetime | None
    counts: dict[str, TypeCountsOut] = Field(description="Per event type: lifetime and windowed counts.")
    cart: CartOut
    recent_events: list[RecentEventOut] = Field(description="The last 20 events, newest first.")
    consent: dict[str, ConsentOut]
    attributes: dict[str, Any]

    @classmethod
    def of(cls, p: Profile) -> dict[str, Any]:
        """The JSON body for a profile (built directly: this is also what the decide path will read)."""
        return {
            "id": p.id,
            "id_type": p.kind,
            "anonymous_ids": list(p.anonymous_ids),
            "stage": p.stage,
            "first_seen": iso(p.first_seen_ms),
            "last_seen": iso(p.last_seen_ms),
            "orders": p.orders,
            "revenue": p.revenue,
            "first_purchase": iso(p.first_purchase_ms),
            "last_purchase": iso(p.last_purchase_ms),
            "counts": {
                t: {
                    "total": c.total,
                    "last_at": iso(c.last_at_ms),
                    **{w.name: c.windows[w.name] for w in WINDOWS},
                }
                for t, c in p.counts.items()
            },
            "cart": {
                "items": [
                    {
                        "item_id": i.item_id,
                        "quantity": i.quantity,
                        "price": i.price,
                        "changed_at": iso(i.changed_at_ms),
                    }
                    for i in p.cart.lines
                ],
                "quantity": p.cart.quantity,
                "value": p.cart.value,
                "changed_at": iso(p.cart.changed_at_ms),
            },
            "recent_events": [
                {"type": e.type, "timestamp": iso(e.time_ms), "properties": dict(e.properties)}
                for e in p.recent
            ],
            "consent": {
                ch: {"granted": c.granted, "changed_at": iso(c.changed_at_ms)} for ch, c in p.consent.items()
            },
            "attributes": dict(p.attributes),
        }


Context = Annotated[dict[PropertyName, PropertyValue], Field(max_length=MAX_PROPERTIES)]


class DecideEventIn(EventFields):
    """The event that prompted the decision; it belongs to the decision's customer."""


class DecideIn(_Strict):
    customer_id: Id | None = None
    anonymous_id: Id | None = None
    placement: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    event: DecideEventIn | None = None
    context: Context = Field(
        default_factory=dict, description="What the models and rules see beside the profile."
    )
    limit: int | None = Field(
        None, ge=1, le=10, description="How many actions at most; default: the placement's."
    )
    explain: bool = False

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "c-42",
                    "placement": "web.product_page",
                    "event": {"type": "product_view", "properties": {"item_id": "sku-1", "price": 19.9}},
                    "context": {"device": "mobile", "hour": 14, "referrer": "newsletter"},
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _has_an_id(self) -> DecideIn:
        if self.customer_id is None and self.anonymous_id is None:
            raise ValueError("one of customer_id or anonymous_id is required")
        return self


class ActionOut(BaseModel):
    action_id: str
    channel: str
    probability: float = Field(description="The exact probability with which this action was chosen.")
    score: float = Field(description="Its priority: propensity x context weight x value x levers.")
    payload: dict[str, Any]


class VerdictOut(BaseModel):
    action_id: str
    status: Literal["chosen", "not_chosen", "ineligible", "no_consent", "capped", "suppressed", "holdout"]
    reason: str
    probability: float | None = None
    propensity: float | None = None
    maturity: Literal["cold", "learning", "mature"] | None = Field(
        None, description="How much evidence the propensity rests on (docs/learning.md)."
    )
    score: float | None = None


class DecideOut(BaseModel):
    decision_id: str
    customer_id: str | None
    anonymous_id: str | None = None
    placement: str
    group: Literal["treatment", "control"] | None = Field(description="None only on a fallback.")
    fallback: bool
    actions: list[ActionOut]
    policy_version: str
    model_version: str
    event: EventsAccepted | None = Field(None, description="What became of the event sent with the call.")
    explanation: list[VerdictOut] | None = None


class OutcomeIn(_Strict):
    decision_id: Id
    action_id: Id
    type: Literal["impression", "click", "dismiss", "conversion"]
    value: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    timestamp: Timestamp | None = None


class OutcomeBatchIn(_Strict):
    outcomes: Annotated[list[OutcomeIn], Field(min_length=1, max_length=MAX_BATCH)]


OutcomesBody = Annotated[
    Annotated[OutcomeBatchIn, Tag("batch")] | Annotated[OutcomeIn, Tag("single")],
    Discriminator(_one_or_many("outcomes")),
]


class OutcomeError(BaseModel):
    index: int
    error: str
    detail: str


class OutcomesAccepted(BaseModel):
    accepted: int
    duplicates: int
    errors: list[OutcomeError] = Field(default_factory=list, description="In a batch: the items not taken.")
