"""The outbox: webhook deliveries waiting, in flight and dead, in Redis, so that none is lost.

A message is enqueued once (its id makes enqueuing idempotent), then claimed by one worker at a time
under a lease, and settled by that worker: delivered, retried later, or dead (a dead letter, kept
until an operator replays it). A worker that dies between its claim and its settlement leaves the
lease to expire, and the message is claimed again: deliveries are at least once, never silently
dropped. Every state change is one call to ``lua/outbox.lua``; the keys are in ``keys.py``.

The worker that delivers is ``app/delivery.py``; docs/deliveries.md is the guide.

Examples
--------
>>> outbox = store.outbox()                                               # doctest: +SKIP
>>> message = delivery(decision_id="d-1", customer="c:c-42", action_id="cart_email", channel="email",
...                    destination="crm", payload={"template": "cart-1"}, profile={},
...                    time_ms=now_ms)                                      # doctest: +SKIP
>>> await outbox.enqueue(message, due_ms=now_ms)                          # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis.asyncio as aioredis

from feature_store import keys
from feature_store.calls import lua
from feature_store.calls import translated as _translated
from feature_store.keys import IdKind, ProfileKeys
from feature_store.profile import iso

KEEP_DELIVERED_MS: Final = 7 * 86_400_000
REPLAY_BATCH: Final = 500
EVENT_TYPE: Final = "action.chosen"

_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# The dead zset's members: "<13-digit ms>|<id>" (keys.py). A listing's cursor is the last one listed.
CURSOR_PATTERN: Final = r"^[0-9]{13}\|[A-Za-z0-9._:\-]{1,128}$"

State = Literal["due", "leased", "delivered", "dead", "discarded"]
_STATES: Final[dict[str, State]] = {s: s for s in ("due", "leased", "delivered", "dead", "discarded")}


def message_id(decision_id: str, action_id: str) -> str:
    """The id of the delivery of ``action_id`` chosen by ``decision_id``: the same every time, so that
    a trigger that fires twice for one decision enqueues one message. Used as ``webhook-id``."""
    digest = hashlib.sha256(f"{decision_id}\n{action_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def _check(what: str, value: str) -> str:
    if not _ID.match(value):
        raise ValueError(f"{what} {value!r} must be 1 to 128 letters, digits, '.', '_', ':' or '-'")
    return value


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery. The first eight fields are what is enqueued; the rest is its state in the outbox.

    ``body`` is the JSON text that is signed and sent byte for byte (see :func:`delivery`).
    ``customer`` is the profile it is for, as ``c:<customer_id>`` or ``a:<anonymous_id>``.
    ``lease`` is the token of the claim that holds it, set on claimed messages only.
    """

    id: str
    destination: str
    body: str
    customer: str
    decision_id: str
    action_id: str
    channel: str
    created_ms: int
    attempts: int = 0
    state: State = "due"
    last_attempt_ms: int | None = None
    last_error: str | None = None
    last_status: int | None = None
    dead_ms: int | None = None
    lease: str | None = None

    def fields(self) -> dict[str, str]:
        """What is stored when it is enqueued."""
        return {
            "id": self.id,
            "destination": self.destination,
            "body": self.body,
            "customer": self.customer,
            "decision_id": self.decision_id,
            "action_id": self.action_id,
            "channel": self.channel,
            "created_ms": str(self.created_ms),
        }

    @classmethod
    def stored(cls, fields: Mapping[str, str]) -> Message:
        def number(name: str) -> int | None:
            value = fields.get(name)
            return None if value is None else int(value)

        state = _STATES[fields.get("state", "due")]
        return cls(
            id=fields["id"],
            destination=fields["destination"],
            body=fields.get("body", ""),
            customer=fields["customer"],
            decision_id=fields["decision_id"],
            action_id=fields["action_id"],
            channel=fields["channel"],
            created_ms=int(fields["created_ms"]),
            attempts=int(fields.get("attempts", 0)),
            state=state,
            last_attempt_ms=number("last_attempt_ms"),
            last_error=fields.get("last_error"),
            last_status=number("last_status"),
            dead_ms=number("dead_ms"),
            lease=fields.get("lease"),
        )


def delivery(
    *,
    decision_id: str,
    customer: str,
    action_id: str,
    channel: str,
    destination: str,
    payload: Mapping[str, Any],
    profile: Mapping[str, Any],
    time_ms: int,
    trigger: str | None = None,
    placement: str | None = None,
    policy_version: str | None = None,
    model_version: str | None = None,
) -> Message:
    """The message that delivers an action chosen for a customer, with the body receivers get.

    ``customer`` is the profile's ref (``ProfileKeys.ref``: ``c:<id>`` or ``a:<id>``), ``payload`` the
    action's payload from the catalogue, ``profile`` the profile features the action ``needs`` (name to
    value), ``time_ms`` when the decision was made. The body follows Standard Webhooks' recommended
    shape, ``{"type", "timestamp", "data"}``; docs/deliveries.md describes every field.
    """
    profile_keys = ProfileKeys.parse(customer)
    who = "customer_id" if profile_keys.kind is IdKind.CUSTOMER else "anonymous_id"
    body = {
        "type": EVENT_TYPE,
        "timestamp": iso(time_ms),
        "data": {
            "decision_id": decision_id,
            who: profile_keys.id,
            "action_id": action_id,
            "channel": channel,
            "payload": dict(payload),
            "profile": dict(profile),
            "trigger": trigger,
            "placement": placement,
            "policy_version": policy_version,
            "model_version": model_version,
        },
    }
    return Message(
        id=message_id(decision_id, action_id),
        destination=destination,
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=sorted),
        customer=customer,
        decision_id=decision_id,
        action_id=action_id,
        channel=channel,
        created_ms=time_ms,
    )


@dataclass(frozen=True, slots=True)
class Counts:
    """For operators: messages waiting (due now or later), being delivered, and dead."""

    due: int
    in_flight: int
    dead: int


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of dead letters replayed or discarded."""

    done: int
    unknown: tuple[str, ...]  # ids given that are not dead letters


DeadLetterOp = Literal["replay", "discard"]


class Outbox:
    """Deliveries in Redis. Build with ``ProfileStore.outbox()``; times are milliseconds, given by the
    caller (the worker's clock), so that tests move time instead of waiting."""

    def __init__(self, client: aioredis.Redis, *, keep_delivered_ms: int = KEEP_DELIVERED_MS) -> None:
        self._redis = client
        self._script = client.register_script(lua("outbox.lua"))
        self._keep_ms = keep_delivered_ms

    async def enqueue(self, message: Message, due_ms: int) -> bool:
        """Add ``message``, due at ``due_ms``. Returns ``False`` when a message with its id is already in
        the outbox (waiting, in flight, dead, or delivered within the last 7 days): nothing changes."""
        _check("message id", message.id)
        _check("destination", message.destination)
        fields = [part for pair in message.fields().items() for part in pair]
        call_keys = [keys.outbox_message(message.id), keys.outbox_due(message.destination)]
        call_keys += [keys.OUTBOX_DESTINATIONS, keys.outbox_customer(message.customer)]
        async with _translated():
            added = await self._script(
                keys=call_keys, args=["enqueue", due_ms, message.id, message.destination, *fields]
            )
        return bool(added)

    async def claim(
        self, destination: str, now_ms: int, lease_ms: int, limit: int, token: str
    ) -> list[Message]:
        """Take up to ``limit`` of ``destination``'s messages that are due (or whose lease expired), in one
        atomic step: each is leased to ``token`` until ``now_ms + lease_ms`` and its attempt is counted.

        Until the lease expires no other claim returns it; after, another claim does (the holder is
        presumed dead), and the old holder can no longer settle it.
        """
        if limit <= 0:
            return []
        call_keys = [keys.outbox_due(destination), keys.outbox_leased(destination)]
        args: list[str | int] = ["claim", now_ms, lease_ms, limit, token, keys.OUTBOX_MESSAGE_PREFIX]
        async with _translated():
            found: list[list[str]] = await self._script(keys=call_keys, args=args)
        return [Message.stored(dict(zip(flat[::2], flat[1::2], strict=True))) for flat in found]

    async def delivered(self, message: Message, now_ms: int, status: int | None = None) -> bool:
        """The claimed ``message`` was delivered. ``False`` when its lease was lost (expired, and claimed
        again): then nothing changes here."""
        return await self._settle("delivered", message, now_ms, status=status)

    async def retry(
        self, message: Message, now_ms: int, due_ms: int, error: str, status: int | None = None
    ) -> bool:
        """The attempt failed and is to be made again at ``due_ms``. ``False`` when the lease was lost."""
        return await self._settle("retry", message, now_ms, due_ms=due_ms, error=error, status=status)

    async def dead(self, message: Message, now_ms: int, error: str, status: int | None = None) -> bool:
        """Give up on ``message``: it becomes a dead letter until replayed. ``False`` when the lease was
        lost."""
        return await self._settle("dead", message, now_ms, error=error, status=status)

    async def _settle(
        self,
        outcome: str,
        message: Message,
        now_ms: int,
        *,
        due_ms: int = 0,
        error: str = "",
        status: int | None = None,
    ) -> bool:
        if message.lease is None:
            raise ValueError(f"message {message.id} was not claimed: only a claimed message is settled")
        call_keys = [
            keys.outbox_message(message.id),
            keys.outbox_leased(message.destination),
            keys.outbox_due(message.destination),
            keys.OUTBOX_DEAD,
            keys.outbox_customer(message.customer),
        ]
        args: list[str | int] = [
            "settle", outcome, message.id, message.lease, now_ms, due_ms, error,
            "" if status is None else status, self._keep_ms,
        ]  # fmt: skip
        async with _translated():
            return bool(await self._script(keys=call_keys, args=args))

    async def forget(self, customer: str) -> int:
        """Erase the messages for ``customer`` (a profile ref) that were not delivered: waiting, in
        flight or dead. A delivered message keeps no body, and its id and customer go after 7 days.
        Returns how many were erased."""
        call_keys = [keys.outbox_customer(customer), keys.OUTBOX_DEAD]
        prefixes = [keys.OUTBOX_MESSAGE_PREFIX, keys.OUTBOX_DUE_PREFIX, keys.OUTBOX_LEASED_PREFIX]
        async with _translated():
            return int(await self._script(keys=call_keys, args=["forget", *prefixes]))

    async def message(self, message_id: str) -> Message | None:
        """The message with this id, in whatever state, or ``None``."""
        async with _translated():
            found: dict[str, str] = await self._redis.hgetall(keys.outbox_message(message_id))  # type: ignore[assignment]
        return Message.stored(found) if found else None

    async def dead_letters(self, limit: int, cursor: str | None = None) -> tuple[list[Message], str | None]:
        """Up to ``limit`` dead letters, oldest death first, after ``cursor`` (the ``next`` of the page
        before). Returns them and the cursor of the next page, ``None`` at the end."""
        start = "-" if cursor is None else f"({cursor}"
        async with _translated():
            members: list[str] = await self._redis.zrangebylex(  # type: ignore[assignment]
                keys.OUTBOX_DEAD, start, "+", start=0, num=limit + 1
            )
            page = members[:limit]
            letters = await self._messages([member.partition("|")[2] for member in page])
        return letters, (page[-1] if len(members) > limit else None)

    async def _messages(self, ids: Sequence[str]) -> list[Message]:
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hgetall(keys.outbox_message(message_id))
            found: list[dict[str, str]] = await pipe.execute()
        return [Message.stored(fields) for fields in found if fields]

    async def replay(self, ids: Iterable[str], now_ms: int) -> Handled:
        """Put these dead letters back in their destination's queue, due at ``now_ms``, attempts reset,
        same id. An id that is not a dead letter is reported in ``unknown`` and changes nothing."""
        return await self._each("replay", ids, now_ms)

    async def discard(self, ids: Iterable[str], now_ms: int) -> Handled:
        """Give these dead letters up for good: each keeps its id and state ``discarded`` (no body) as
        long as a delivered message, so that enqueuing it again changes nothing; then it is gone. An id
        that is not a dead letter is reported in ``unknown`` and changes nothing."""
        return await self._each("discard", ids, now_ms)

    async def replay_all(self, now_ms: int) -> int:
        """Replay every dead letter that died by ``now_ms``; those dying meanwhile wait for the next call.
        Works in batches, so a long list does not hold Redis up."""
        return await self._all("replay", now_ms)

    async def discard_all(self, now_ms: int) -> int:
        """Discard every dead letter that died by ``now_ms``, in batches (see ``replay_all``)."""
        return await self._all("discard", now_ms)

    async def _each(self, op: DeadLetterOp, ids: Iterable[str], now_ms: int) -> Handled:
        given = list(dict.fromkeys(ids))
        wanted = [message_id for message_id in given if _ID.match(message_id)]  # others cannot be
        done, found = 0, set()
        for start in range(0, len(wanted), REPLAY_BATCH):
            batch = wanted[start : start + REPLAY_BATCH]
            count, missing = await self._dead(op, batch, now_ms)
            done += count
            found.update(set(batch) - set(missing))
        return Handled(done, tuple(message_id for message_id in given if message_id not in found))

    async def _all(self, op: DeadLetterOp, now_ms: int) -> int:
        done, after = 0, "-"
        until = f"[{now_ms:013d}|~"  # '~' sorts after every character an id may hold
        while True:
            async with _translated():
                members: list[str] = await self._redis.zrangebylex(  # type: ignore[assignment]
                    keys.OUTBOX_DEAD, after, until, start=0, num=REPLAY_BATCH
                )
            if not members:
                return done
            count, _ = await self._dead(op, [member.partition("|")[2] for member in members], now_ms)
            done += count
            after = f"({members[-1]}"  # past this batch, whatever became of it

    async def _dead(self, op: DeadLetterOp, ids: list[str], now_ms: int) -> tuple[int, list[str]]:
        prefixes = [keys.OUTBOX_MESSAGE_PREFIX, keys.OUTBOX_DUE_PREFIX, keys.OUTBOX_CUSTOMER_PREFIX]
        args: list[str | int] = [op, now_ms, *prefixes, self._keep_ms, *ids]
        async with _translated():
            done, missing = await self._script(keys=[keys.OUTBOX_DEAD], args=args)
        return int(done), [str(i) for i in missing]

    async def destinations(self) -> set[str]:
        """Every destination a message was ever enqueued to."""
        async with _translated():
            found: set[str] = await self._redis.smembers(keys.OUTBOX_DESTINATIONS)  # type: ignore[assignment]
        return found

    async def counts(self) -> Counts:
        destinations = sorted(await self.destinations())
        async with _translated(), self._redis.pipeline(transaction=False) as pipe:
            for destination in destinations:
                pipe.zcard(keys.outbox_due(destination))
                pipe.zcard(keys.outbox_leased(destination))
            pipe.zcard(keys.OUTBOX_DEAD)
            found: list[int] = await pipe.execute()
        return Counts(due=sum(found[0:-1:2]), in_flight=sum(found[1:-1:2]), dead=found[-1])
