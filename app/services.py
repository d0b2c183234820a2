"""What the routes call: one method per use case, schemas in, schemas out. No HTTP here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.auth import KeyRing
from app.errors import InvalidInput, NotFound
from app.schemas import EventBatchIn, EventIn, EventsAccepted, IdentityIn, IdentityLinked, ProfileOut
from app.settings import Settings
from feature_store import Event, IdKind, ProfileStore, StageRules, StoreConfig

Clock = Callable[[], float]


def store_config(settings: Settings) -> StoreConfig:
    return StoreConfig(
        profile_ttl_ms=settings.profile_ttl_days * 86_400_000,
        dedupe_window_ms=settings.dedupe_window_hours * 3_600_000,
        stage_rules=StageRules(),
    )


def _unknown(profile_id: str, id_type: IdKind) -> str:
    kind, other = ("customer", "anonymous") if id_type is IdKind.CUSTOMER else ("anonymous", "customer")
    return (
        f"no profile for {kind} id {profile_id!r}; it was never seen, was erased, or is "
        f"{'an' if other == 'anonymous' else 'a'} {other} id (add ?id_type={other})"
    )


@dataclass(slots=True)
class Services:
    settings: Settings
    store: ProfileStore
    keys: KeyRing
    clock: Clock = time.time

    def _events(self, body: EventIn | EventBatchIn) -> list[Event]:
        items = body.events if isinstance(body, EventBatchIn) else [body]
        now_ms = int(self.clock() * 1000)
        latest_ms = now_ms + self.settings.future_tolerance_s * 1000
        events, problems = [], []
        for index, item in enumerate(items):
            time_ms = now_ms if item.timestamp is None else int(item.timestamp.timestamp() * 1000)
            if time_ms > latest_ms:
                where = f"events[{index}].timestamp" if isinstance(body, EventBatchIn) else "timestamp"
                problems.append(
                    {
                        "field": where,
                        "problem": f"is {(time_ms - now_ms) / 1000:.0f}s in the future; event times may be "
                        f"at most {self.settings.future_tolerance_s}s ahead of the service clock "
                        "(check the sender's clock and time zone, or leave timestamp out to mean now)",
                    }
                )
                continue
            events.append(
                Event(
                    type=item.type,
                    time_ms=time_ms,
                    customer_id=item.customer_id,
                    anonymous_id=item.anonymous_id,
                    event_id=item.event_id,
                    properties=item.properties,
                )
            )
        if problems:
            summary = "; ".join(f"{p['field']} {p['problem']}" for p in problems[:3])
            raise InvalidInput(f"nothing was applied: {summary}", code="timestamp_in_future", fields=problems)
        return events

    async def ingest(self, body: EventIn | EventBatchIn) -> EventsAccepted:
        result = await self.store.ingest(self._events(body))
        return EventsAccepted(accepted=result.accepted, duplicates=result.duplicates)

    async def profile(self, profile_id: str, id_type: IdKind) -> dict[str, Any]:
        profile = await self.store.profile(profile_id, id_type)
        if profile is None:
            raise NotFound(_unknown(profile_id, id_type), code="customer_not_found")
        return ProfileOut.of(profile)

    async def erase(self, profile_id: str, id_type: IdKind) -> None:
        if not await self.store.erase(profile_id, id_type):
            raise NotFound(_unknown(profile_id, id_type), code="customer_not_found")

    async def link(self, body: IdentityIn) -> IdentityLinked:
        merged = await self.store.link(body.anonymous_id, body.customer_id)
        return IdentityLinked(anonymous_id=body.anonymous_id, customer_id=body.customer_id, merged=merged)

    async def ready(self) -> None:
        await self.store.ping()
