"""Operators' view of webhook deliveries: the dead letters, replayed or discarded (docs/deliveries.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app import delivery
from app.auth import require
from app.errors import documented
from app.routes.deps import ServicesDep
from app.schemas import Id
from app.settings import Scope
from feature_store.keys import IdKind, ProfileKeys
from feature_store.outbox import CURSOR_PATTERN, Message
from feature_store.profile import iso

router = APIRouter(
    prefix="/v1/admin/dead-letters", tags=["deliveries"], dependencies=[Depends(require(Scope.ADMIN))]
)
MAX_PAGE = 1000


class DeadLetterOut(BaseModel):
    id: str = Field(description="The message id, sent as webhook-id on every attempt and kept on replay.")
    destination: str
    action_id: str
    channel: str
    decision_id: str
    customer_id: str | None = Field(description="The customer it was for (or null, with anonymous_id).")
    anonymous_id: str | None
    attempts: int = Field(description="Attempts made before it was given up.")
    last_status: int | None = Field(description="The HTTP status of the last attempt; null without one.")
    last_error: str | None = Field(description="Why the last attempt failed, and the start of the answer.")
    created_at: str | None
    last_attempt_at: str | None
    dead_at: str | None

    @classmethod
    def of(cls, message: Message) -> DeadLetterOut:
        who = ProfileKeys.parse(message.customer)
        known = who.kind is IdKind.CUSTOMER
        return cls(
            id=message.id,
            destination=message.destination,
            action_id=message.action_id,
            channel=message.channel,
            decision_id=message.decision_id,
            customer_id=who.id if known else None,
            anonymous_id=None if known else who.id,
            attempts=message.attempts,
            last_status=message.last_status,
            last_error=message.last_error,
            created_at=iso(message.created_ms),
            last_attempt_at=iso(message.last_attempt_ms),
            dead_at=iso(message.dead_ms),
        )


class DeliveryCountsOut(BaseModel):
    due: int = Field(description="Waiting for an attempt, now or later (retries included).")
    in_flight: int = Field(description="Claimed by a worker and being attempted.")
    dead: int


class DeadLettersOut(BaseModel):
    dead_letters: list[DeadLetterOut] = Field(description="Oldest death first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last one.")
    counts: DeliveryCountsOut


class ReplayIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"ids": ["msg_3f1c0a9e5b7d4c2a8e6f1b0d9c7a5e3f"]}, {"all": True}]},
    )

    ids: list[Id] | None = Field(
        None, min_length=1, max_length=MAX_PAGE, description="Dead letters to replay."
    )
    all: Literal[True] | None = Field(None, description="Replay every dead letter.")

    @model_validator(mode="after")
    def _one_of(self) -> ReplayIn:
        if (self.ids is None) == (self.all is None):
            raise ValueError('give either "ids" (a list of dead letter ids) or "all": true')
        return self


class DiscardIn(ReplayIn):
    """A replay's body (its configuration and check inherited), its fields described for a discard."""

    ids: list[Id] | None = Field(
        None, min_length=1, max_length=MAX_PAGE, description="Dead letters to discard."
    )
    all: Literal[True] | None = Field(None, description="Discard every dead letter.")


class DiscardOut(BaseModel):
    discarded: int = Field(description="Dead letters given up for good: never delivered, no longer listed.")
    unknown: list[str] = Field(description="Ids given that are not dead letters (nothing was done for them).")


class ReplayOut(BaseModel):
    replayed: int = Field(description="Dead letters put back in their queue, due now, attempts reset.")
    unknown: list[str] = Field(description="Ids given that are not dead letters (nothing was done for them).")


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many dead letters.")]
Cursor = Annotated[
    str | None, Query(pattern=CURSOR_PATTERN, description="The next_cursor of the page before.")
]
_ERRORS = documented(401, 403, 422, 503)


@router.get("", responses=_ERRORS, summary="Webhook deliveries that were given up")
async def get_dead_letters(
    services: ServicesDep, limit: Limit = 100, cursor: Cursor = None
) -> DeadLettersOut:
    """Dead letters, oldest first, a page at a time, with the outbox's counts. Never the secrets."""
    page = await delivery.dead_letters(services.store.outbox(), limit, cursor)
    return DeadLettersOut(
        dead_letters=[DeadLetterOut.of(letter) for letter in page.letters],
        next_cursor=page.next_cursor,
        counts=DeliveryCountsOut(due=page.counts.due, in_flight=page.counts.in_flight, dead=page.counts.dead),
    )


@router.post("", responses=_ERRORS, summary="Replay dead letters")
async def post_dead_letters(body: ReplayIn, services: ServicesDep) -> ReplayOut:
    """Put dead letters back in their destination's queue, due now, with the same id (``webhook-id``)."""
    outbox, now_ms = services.store.outbox(), int(services.clock() * 1000)
    result = await delivery.dead_letters_do(outbox, "replay", body.ids, now_ms)
    return ReplayOut(replayed=result.done, unknown=list(result.unknown))


@router.post("/discard", responses=_ERRORS, summary="Discard dead letters")
async def post_discard(body: DiscardIn, services: ServicesDep) -> DiscardOut:
    """Give dead letters up for good: they are not delivered and no longer listed. Each id is kept, without
    the message, as long as a delivered one (7 days), so a decision that enqueues it again sends nothing."""
    outbox, now_ms = services.store.outbox(), int(services.clock() * 1000)
    result = await delivery.dead_letters_do(outbox, "discard", body.ids, now_ms)
    return DiscardOut(discarded=result.done, unknown=list(result.unknown))
