"""The profile store: events in, profiles out, in as few Redis round trips as the work allows.

* An event, or a batch of events for one customer, costs one round trip (``apply.lua``). A batch for
  many customers costs one round trip for all of them: script calls of up to ``CHUNK_EVENTS`` events
  each, every call applying several customers in turn (a customer's events in one piece per call), all
  sent in one write and their replies read back in order. A script call costs Redis more than most of
  the events in it, so the fewer calls the better; with ``StoreConfig.calls_by_slot`` only customers of
  one Redis Cluster slot share a call. Plus one more round trip when some events name an anonymous id
  that was already linked to a customer: the script answers with the customer id and those events are
  re-sent there. A large batch takes a connection of its own, one batch at a time, so that decisions
  on the shared connection wait for a script call of it, not for all of it (``ProfileStore._bulk_write``).
* Reading a profile is the same script with no events (one round trip; two through a linked
  anonymous id).
* Linking and erasing are rare administrative writes and take a few round trips each; both are safe
  to repeat after a failure (see :meth:`ProfileStore.link` and :meth:`ProfileStore.erase`).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any, Final

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from feature_store import keys, redis_config
from feature_store.calls import lua, translated
from feature_store.errors import IdentityConflict, StoreUnavailable
from feature_store.events import (
    TYPES_WITH_EFFECTS,
    Event,
    attribute_values,
    dedupe_key,
    effect,
    key_properties,
    order_key,
)
from feature_store.keys import KEYS_PER_PROFILE, IdKind, ProfileKeys
from feature_store.multiplex import Multiplexer, pack
from feature_store.profile import WINDOWS, ContactRecord, Profile, RawProfile, StageRules, decode, merge
from feature_store.triggers import (
    SCHEDULE_KEYS,
    SCHEDULE_SHA,
    SCHEDULE_SOURCE,
    TriggerOp,
    TriggerStore,
    schedule_args,
)

if TYPE_CHECKING:
    from feature_store.learning import LearnerStore
    from feature_store.monitoring import MonitoringStore
    from feature_store.outbox import Outbox

Clock = Callable[[], float]
# Events per script call: Redis runs a call whole, so a decision waits for the call running when it
# arrives. 25 keep that wait near a millisecond; 100 cost Redis 1% fewer instructions per event.
CHUNK_EVENTS: Final = 25
# A write of more commands than BULK_COMMANDS, or of script calls applying more events than BULK_EVENTS,
# is bulk: it goes on a connection of its own (ProfileStore._bulk_write).
BULK_COMMANDS: Final = 50
BULK_EVENTS: Final = 50
_YIELD_BYTES: Final = 64 * 1024  # a bulk write is packed in parts of this size, the event loop let in between
CONTACT_HISTORY_MS: Final = 90 * 86_400_000  # the longest window a contact limit may count


@dataclass(frozen=True, slots=True)
class StoreConfig:
    profile_ttl_ms: int = 400 * 86_400_000
    dedupe_window_ms: int = 24 * 3_600_000
    stage_rules: StageRules = field(default_factory=StageRules)
    contacts_ms: int = CONTACT_HISTORY_MS
    decision_ttl_ms: int = 7 * 86_400_000
    log_max: int = 1_000_000
    # Only profiles of one Redis Cluster slot share a script call (a cluster refuses a call whose keys
    # span slots). Off on a single Redis, where any profiles may share one, which costs it far less.
    calls_by_slot: bool = False


@dataclass(frozen=True, slots=True)
class Ingested:
    accepted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Erased:
    """What an erasure found: whether any data of the person existed, and the customer whose profile it
    erased (the id asked for, or the customer a linked anonymous id leads to; ``None`` for an anonymous
    visitor who is linked to no one), whose pending triggers and deliveries go too (app/services.py)."""

    existed: bool
    customer_id: str | None


@dataclass(frozen=True, slots=True)
class Read:
    """A profile as read for a decision: under which keys it lives, as Redis holds it (``raw.exists``
    is false when there is none; features.py reads it), and what the events did."""

    keys: ProfileKeys
    raw: RawProfile
    ingested: Ingested


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    decision_id: str
    profile_keys: ProfileKeys
    served: tuple[ContactRecord, ...]
    group: str | None  # to persist at first sight
    held_out: Mapping[str, bool]  # to persist at first sight
    summary: Mapping[str, str]  # kept under nba:dec:<id> for outcomes
    log: Mapping[str, str]  # the decision log entry


def _apply_source() -> str:
    """``apply.lua`` with profile.py's windows, the start of an anonymous visitor's keys and the number
    of keys per profile written in, so that no call has to send or parse them."""
    windows = ", ".join(f'"{w.code}", {w.bucket_ms}, {w.buckets}, "{w.legacy_code}"' for w in WINDOWS)
    anonymous = json.dumps(keys.anonymous("").tag.removesuffix("}"))  # "nba:{a:", a Lua string too
    return (
        lua("apply.lua")
        .replace("{WINDOWS_FROM_PROFILE_PY}", "{" + windows + "}")
        .replace("{ANONYMOUS_FROM_KEYS_PY}", anonymous)
        .replace("{KEYS_PER_PROFILE_FROM_KEYS_PY}", str(KEYS_PER_PROFILE))
    )


def target(event: Event) -> ProfileKeys:
    """The profile an event lands on: the customer id when given, else the anonymous id."""
    if event.customer_id is not None:
        return keys.customer(event.customer_id)
    assert event.anonymous_id is not None, "validation guarantees one of the two ids"
    return keys.anonymous(event.anonymous_id)


# The recent-events member is JSON that keeps any character as it is; attribute values and the rest of
# an event are plain JSON. Encoders built once: json.dumps builds one per call when given options.
_member_json_module = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_json = json.JSONEncoder(separators=(",", ":")).encode


def _member_json(value: Any) -> str:
    """A recent event's key properties as compact JSON that keeps any character as it is: by orjson (a
    decision's page view has some; a ninth of the json module's 1.7 µs), else by the json module, for
    what orjson refuses (an integer beyond 64 bits, a lone surrogate). profile.loads reads both."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return _member_json_module(value)


_json_string = json.encoder.encode_basestring


def script_args(event: Event) -> list[str]:
    """The event as ``apply.lua`` reads it: type, time, dedupe id or "", recent-events member, and
    "" or a JSON object of the rest (order id, what the type does beyond the counters, attributes)."""
    props = event.properties
    time_ms = str(event.time_ms)
    # Recent events are a sorted set, so two identical events need something to tell them apart: unique
    # enough, and no system call (random's generator is seeded again in a forked child).
    key = event.event_id if event.event_id is not None else f"{random.getrandbits(48):012x}"
    kept = key_properties(props) if props else None
    kept_json = f',"p":{_member_json(kept)}' if kept else ""
    member = f'{{"y":{_json_string(event.type)},"t":{time_ms}{kept_json},"k":{_json_string(key)}}}'
    rest: dict[str, Any] = {}
    if event.type in TYPES_WITH_EFFECTS:
        if (order := order_key(event)) is not None:
            rest["o"] = order
        rest.update(effect(event.type, props))
        if attributes := attribute_values(event):
            rest["a"] = {name: _json(value) for name, value in attributes}
    dedupe = dedupe_key(event)
    return [event.type, time_ms, "" if dedupe is None else dedupe, member, _json(rest) if rest else ""]


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _scored(reply: Sequence[Any]) -> tuple[tuple[str, float], ...]:
    """A sorted set read WITHSCORES: a flat [member, score, ...] from a script, or pairs from the client."""
    if reply and isinstance(reply[0], list | tuple):
        return tuple((str(m), float(s)) for m, s in reply)
    return tuple((m, float(s)) for m, s in zip(reply[::2], reply[1::2], strict=True))


def _raw(
    profile: Sequence[str],
    windows: Sequence[str],
    cart: Sequence[str],
    recent: Sequence[str],
    *,
    dedupe: tuple[tuple[str, float], ...] = (),
    aliases: frozenset[str] = frozenset(),
    contacts: tuple[tuple[str, float], ...] = (),
    purchases: tuple[tuple[str, float], ...] = (),
) -> RawProfile:
    """A profile from link.lua's reply: the hashes as flat [field, value, ...] lists."""
    return RawProfile(
        _pairs(profile), _pairs(windows), _pairs(cart), _scored(recent), dedupe, aliases, contacts, purchases
    )


def _chunks(groups: dict[ProfileKeys, list[Event]]) -> list[tuple[ProfileKeys, list[Event]]]:
    """Every profile's events, in scripts of up to ``CHUNK_EVENTS`` events (a long script holds Redis up)."""
    return [
        (profile_keys, events[start : start + CHUNK_EVENTS])
        for profile_keys, events in groups.items()
        for start in range(0, len(events), CHUNK_EVENTS)
    ]


def _calls(chunks: Sequence[tuple[ProfileKeys, Sequence[Event]]], by_slot: bool) -> list[list[int]]:
    """Which chunks each script call applies, in order: up to ``CHUNK_EVENTS`` events a call (a read
    counts as one); with ``by_slot``, only profiles of one Redis Cluster slot share a call. A profile's
    later chunk always lands in a later call, or later in the same one."""
    if len(chunks) == 1:  # a decision's read, an event: one call whatever its size or slot
        return [[0]]
    calls: list[list[int]] = []
    filling: dict[int, tuple[list[int], int]] = {}  # by slot: the call being filled, its events
    for i, (profile_keys, events) in enumerate(chunks):
        slot = key_slot(profile_keys.tag.encode()) if by_slot else 0
        size = max(1, len(events))
        call, held = filling.get(slot, (None, CHUNK_EVENTS))
        if call is None or held + size > CHUNK_EVENTS:
            call, held = [], 0
            calls.append(call)
        call.append(i)
        filling[slot] = (call, held + size)
    return calls


class ProfileStore:
    """Profiles in Redis. Build with :meth:`connect`, close with :meth:`aclose`.

    Examples
    --------
    >>> store = ProfileStore.connect("redis://127.0.0.1:6379/0")      # doctest: +SKIP
    >>> await store.ingest([Event("page_view", 1_700_000_000_000, customer_id="c-42")])  # doctest: +SKIP
    Ingested(accepted=1, duplicates=0)
    """

    def __init__(self, client: aioredis.Redis, config: StoreConfig, clock: Clock = time.time) -> None:
        self._redis = client
        self._config = config
        self._clock = clock
        self._apply_src = _apply_source()
        self._link = client.register_script(lua("link.lua"))
        self._contact_src = lua("contact.lua")
        self._apply_sha: str | None = None
        timeout_s = client.connection_pool.connection_kwargs.get("socket_timeout") or 0.5
        # Redis answers one connection's commands in order but takes turns between connections: small
        # calls share one connection, and bulk writes take turns, one at a time, on a connection of the
        # pool (see _pipelined).
        self._hot = Multiplexer(client.connection_pool, timeout_s)
        self._bulk = asyncio.Lock()
        self._bulk_failed: tuple[float, BaseException] | None = None  # when the last bulk write failed, why

    @classmethod
    def connect(
        cls,
        url: str,
        config: StoreConfig | None = None,
        *,
        clock: Clock = time.time,
        timeout_s: float = 0.5,
        max_connections: int = 64,
    ) -> ProfileStore:
        """A store on ``url`` with a bounded pool whose every wait is bounded by ``timeout_s``.

        No retries inside the client: a write whose reply was lost is answered 503 rather than applied
        twice behind the caller's back.
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(aioredis.Redis(connection_pool=pool), config or StoreConfig(), clock)

    async def aclose(self) -> None:
        self._hot.close()
        await self._redis.aclose()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def load_scripts(self) -> None:
        """Load the scripts and open the shared connection now, so the first event does not pay for it."""
        async with translated():
            await self._load_scripts()

    async def ping(self) -> None:
        async with translated():
            await self._redis.ping()

    async def check_config(self) -> list[redis_config.Finding]:
        """The settings of this Redis that are not what the service needs (redis_config.py)."""
        async with translated():
            return await redis_config.check(self._redis)

    async def ingest(self, events: Iterable[Event], trigger_ops: Sequence[TriggerOp] = ()) -> Ingested:
        """Apply events, each exactly once per dedupe id within the dedupe window, and the trigger
        instances they start and cancel (triggers.py), in the same round trip."""
        groups: dict[ProfileKeys, list[Event]] = {}
        for event in events:
            groups.setdefault(target(event), []).append(event)
        accepted = duplicates = 0
        for attempt in range(2):
            chunks = _chunks(groups)
            replies = await self._apply(chunks, read=False, trigger_ops=trigger_ops)
            trigger_ops = ()  # applied; a redirected event is an anonymous one, which starts none
            redirected: dict[ProfileKeys, list[Event]] = {}
            for group, reply in replies:
                accepted += int(reply[0])
                duplicates += int(reply[1])
                for i in range(2, len(reply), 2):
                    # Nothing of this chunk was applied: it goes to the customer.
                    _, chunk = chunks[group[int(reply[i]) - 1]]
                    redirected.setdefault(keys.customer(reply[i + 1]), []).extend(chunk)
            if not redirected:
                break
            # A redirect always lands on a customer id, and customer ids are never redirected.
            assert attempt == 0, "a linked id pointed at another linked id"
            groups = redirected
        return Ingested(accepted, duplicates)

    async def profile(self, profile_id: str, kind: IdKind = IdKind.CUSTOMER) -> Profile | None:
        """The live profile, or ``None`` when nothing is known of this id."""
        read = await self._apply_and_read(ProfileKeys(kind, profile_id), [])
        if not read.raw.exists:
            return None
        kind_name = "customer" if read.keys.kind is IdKind.CUSTOMER else "anonymous"
        rules = self._config.stage_rules
        return decode(read.raw, id=read.keys.id, kind=kind_name, now_ms=self.now_ms(), rules=rules)

    @property
    def stage_rules(self) -> StageRules:
        """How the profiles' journey stages are worked out (profile.py ``stage``)."""
        return self._config.stage_rules

    async def apply_and_read(
        self, profile_keys: ProfileKeys, events: Sequence[Event], trigger_ops: Sequence[TriggerOp] = ()
    ) -> Read:
        """Apply the events of one profile (and the trigger instances they start and cancel) and read it
        back, in one round trip (two via a linked id)."""
        return await self._apply_and_read(profile_keys, events, trigger_ops)

    # Public methods call private ones, never each other: the app measures each public call as one store
    # operation (app/metrics.py), and a nested one would be counted twice.
    async def _apply_and_read(
        self, profile_keys: ProfileKeys, events: Sequence[Event], trigger_ops: Sequence[TriggerOp] = ()
    ) -> Read:
        [(_, [result])] = await self._apply([(profile_keys, events)], read=True, trigger_ops=trigger_ops)
        if result[0] == "redirect":
            profile_keys = keys.customer(result[1])
            [(_, [result])] = await self._apply([(profile_keys, events)], read=True)
        profile_hash, windows, cart, recent_json, aliases, contacts = result[3:9]
        raw = RawProfile(
            _pairs(profile_hash),
            _pairs(windows),
            _pairs(cart),
            aliases=frozenset(aliases),
            contacts=_scored(contacts),
            recent_json=recent_json,
        )
        return Read(profile_keys, raw, Ingested(int(result[1]), int(result[2])))

    async def record_decision(self, record: DecisionRecord) -> None:
        """Record a decision in one round trip: the contacts it served, the holdout assignments made at
        first sight, the decision log entry, and the decision itself for its outcomes."""
        config, target_keys, now = self._config, record.profile_keys, self.now_ms()
        profile, contacts, ttl = target_keys.profile, target_keys.contacts, config.profile_ttl_ms
        commands: list[tuple[Any, ...]] = []
        if record.group is not None:
            commands.append(("HSETNX", profile, "g", record.group))
        for action_id, withheld in record.held_out.items():
            commands.append(("HSETNX", profile, f"h:{action_id}", "1" if withheld else "0"))
        # A decision is activity: the profile (and its holdout assignments) lives on from here.
        commands.append(("PEXPIRE", profile, ttl))
        if record.served:
            members = [x for c in record.served for x in (c.time_ms, c.member())]
            commands.append(("ZADD", contacts, *members))
            commands.append(("ZREMRANGEBYSCORE", contacts, "-inf", f"({now - config.contacts_ms}"))
            commands.append(("PEXPIRE", contacts, ttl))
        decision_key = keys.decision(record.decision_id)
        # Fields and values flattened by itertools, in C: a comprehension made a decision's 20-odd pairs
        # 360 bytecodes of the worker's (a third of the recording's own).
        commands.append(("HSET", decision_key, *chain.from_iterable(record.summary.items())))
        commands.append(("PEXPIRE", decision_key, config.decision_ttl_ms))
        entry = chain.from_iterable(record.log.items())
        commands.append(("XADD", keys.DECISION_LOG, "MAXLEN", "~", config.log_max, "*", *entry))
        async with translated():
            for reply in await self._pipelined(commands):
                if isinstance(reply, Exception):
                    raise reply

    async def decision(self, decision_id: str) -> dict[str, str] | None:
        """What was recorded of a decision (``record_decision``'s summary and its outcomes), if it is kept."""
        async with translated():
            found: dict[str, str] = await self._redis.hgetall(keys.decision(decision_id))  # type: ignore[assignment]
        return found or None

    async def record_outcome(
        self, decision_id: str, mark: str, contact: ContactRecord | None, log: Mapping[str, str]
    ) -> bool:
        """Record an outcome once: ``mark`` names it within the decision (e.g. ``click:proactive_chat``).

        Returns ``False`` for a repeat, which changes nothing. A dismissal or conversion also enters the
        customer's contact history, where contact policies see it."""
        decision_key = keys.decision(decision_id)
        async with translated():
            if not await self._redis.hsetnx(decision_key, f"o:{mark}", str(self.now_ms())):
                return False
            async with self._redis.pipeline(transaction=False) as pipe:
                if contact is not None:
                    pipe.eval(
                        self._contact_src, 3, *self._contact_call(ProfileKeys.parse(log["customer"]), contact)
                    )
                entry: dict[Any, Any] = dict(log)
                pipe.xadd(keys.OUTCOME_LOG, entry, maxlen=self._config.log_max, approximate=True)
                added = await pipe.execute()
            if contact is not None and added[0][0] == "redirect":
                # Decided for a visitor who has since been linked: the customer's history counts it.
                await self._redis.eval(
                    self._contact_src, 3, *self._contact_call(keys.customer(added[0][1]), contact)
                )
        return True

    async def record_contact(self, profile_keys: ProfileKeys, contact: ContactRecord) -> None:
        """Enter a contact in the profile's history (a delivered message), following a link."""
        async with translated():
            added = await self._redis.eval(self._contact_src, 3, *self._contact_call(profile_keys, contact))
            if added[0] in ("redirect", b"redirect"):
                linked = keys.customer(added[1].decode() if isinstance(added[1], bytes) else added[1])
                await self._redis.eval(self._contact_src, 3, *self._contact_call(linked, contact))

    def _contact_call(self, target_keys: ProfileKeys, contact: ContactRecord) -> list[Any]:
        """KEYS and ARGV of ``contact.lua``."""
        return [
            target_keys.profile,
            target_keys.contacts,
            target_keys.alias,
            contact.member(),
            contact.time_ms,
            self._config.profile_ttl_ms,
        ]

    async def link(self, anonymous_id: str, customer_id: str) -> bool:
        """Link an anonymous visitor to a customer and merge the visitor's profile into the customer's.

        Returns whether anything was merged by this call (``False`` on a repeat). Three steps, each
        atomic and each safe to repeat: point the alias at the customer and read the visitor's profile;
        merge it into the customer's (unless this is a repeat the customer already took in); delete the
        visitor's data. A link interrupted between steps completes when it is retried.

        Raises :class:`IdentityConflict` when the visitor is already linked to another customer.
        """
        anon_keys, known_keys = keys.anonymous(anonymous_id), keys.customer(customer_id)
        async with translated():
            taken = await self._link(
                keys=anon_keys.script_keys(), args=[customer_id, self._config.profile_ttl_ms]
            )
            if taken[0] == "conflict":
                raise IdentityConflict(anonymous_id, taken[1])
            anon = _raw(
                *taken[2:6], dedupe=_scored(taken[6]), contacts=_scored(taken[7]), purchases=_scored(taken[8])
            )
            merged = await self._merge_into(known_keys, anonymous_id, anon, fresh=taken[1] == 1)
            await self._redis.delete(*anon_keys.data_keys())
        return merged

    async def _merge_into(
        self, known_keys: ProfileKeys, anonymous_id: str, anon: RawProfile, *, fresh: bool
    ) -> bool:
        """Merge unless this link was made before and the customer already lists the visitor (a repeat,
        or the retry of a link interrupted after its merge). A fresh link always merges: the customer
        may list the visitor from a link that has since expired, while the visitor's data is new."""
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(*known_keys.data_keys())
                    if not fresh and await pipe.sismember(known_keys.aliases, anonymous_id):
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return False
                    known = RawProfile(
                        profile=await pipe.hgetall(known_keys.profile),  # type: ignore[arg-type]
                        windows=await pipe.hgetall(known_keys.windows),  # type: ignore[arg-type]
                        cart=await pipe.hgetall(known_keys.cart),  # type: ignore[arg-type]
                        recent=_scored(await pipe.zrange(known_keys.recent, 0, -1, withscores=True)),
                        dedupe=_scored(await pipe.zrange(known_keys.dedupe, 0, -1, withscores=True)),
                        contacts=_scored(await pipe.zrange(known_keys.contacts, 0, -1, withscores=True)),
                        purchases=_scored(await pipe.zrange(known_keys.purchases, 0, -1, withscores=True)),
                    )
                    result = merge(known, anon) if anon.exists else known
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._write(pipe, known_keys, result, anonymous_id)
                    await pipe.execute()
                    return anon.exists
                except rx.WatchError:
                    continue

    def _write(self, pipe: Any, target_keys: ProfileKeys, raw: RawProfile, anonymous_id: str) -> None:
        ttl = self._config.profile_ttl_ms
        pipe.delete(target_keys.profile, target_keys.windows, target_keys.cart, target_keys.recent)
        for key, mapping in (
            (target_keys.profile, raw.profile),
            (target_keys.windows, raw.windows),
            (target_keys.cart, raw.cart),
        ):
            if mapping:
                pipe.hset(key, mapping=dict(mapping))
        if raw.recent:
            pipe.zadd(target_keys.recent, dict(raw.recent))
        if raw.dedupe:
            pipe.zadd(target_keys.dedupe, dict(raw.dedupe))
        if raw.contacts:
            pipe.zadd(target_keys.contacts, dict(raw.contacts))
        if raw.purchases:
            pipe.zadd(target_keys.purchases, dict(raw.purchases))
        pipe.sadd(target_keys.aliases, anonymous_id)
        for key in target_keys.data_keys():
            pipe.pexpire(key, ttl)

    def learning(self) -> LearnerStore:
        """The learner's view of the same Redis."""
        from feature_store.learning import LearnerStore

        return LearnerStore(self._redis)

    def triggers(self) -> TriggerStore:
        """Timed triggers' instances, in the same Redis (triggers.py)."""
        return TriggerStore(self._redis)

    def outbox(self) -> Outbox:
        """The webhook deliveries' outbox, in the same Redis (outbox.py)."""
        from feature_store.outbox import Outbox

        return Outbox(self._redis)

    def monitoring(self) -> MonitoringStore:
        """Backlogs and the dashboard's samples, in the same Redis (monitoring.py)."""
        from feature_store.monitoring import MonitoringStore

        return MonitoringStore(self._redis)

    async def catalogue_generation(self) -> str:
        async with translated():
            return str(await self._redis.get(keys.CATALOGUE_GENERATION) or "0")

    async def bump_catalogue_generation(self) -> str:
        async with translated():
            return str(await self._redis.incr(keys.CATALOGUE_GENERATION))

    async def erase(self, profile_id: str, kind: IdKind = IdKind.CUSTOMER) -> Erased:
        """Erase everything about a person: the profile, every linked anonymous id and its data.

        Through a linked anonymous id, the customer it is linked to is erased. Linked ids go first and
        the customer's own keys (which list them) last, so an interrupted erase completes when repeated.
        """
        profile_keys = ProfileKeys(kind, profile_id)
        async with translated():
            if kind is IdKind.ANONYMOUS and (linked := await self._redis.get(profile_keys.alias)):
                profile_keys = keys.customer(str(linked))
            aliases: set[str] = await self._redis.smembers(profile_keys.aliases)  # type: ignore[assignment]
            existed = bool(await self._redis.exists(*profile_keys.data_keys(), profile_keys.alias))
            async with self._redis.pipeline(transaction=False) as pipe:
                for anonymous_id in aliases:
                    linked_keys = keys.anonymous(anonymous_id)
                    pipe.delete(*linked_keys.data_keys(), linked_keys.alias)
                pipe.delete(*profile_keys.data_keys(), profile_keys.alias)
                await pipe.execute()
        customer = profile_keys.id if profile_keys.kind is IdKind.CUSTOMER else None
        return Erased(existed or bool(aliases), customer)

    def _pipelined(self, commands: Sequence[tuple[Any, ...]], events: int = 0) -> Awaitable[list[Any]]:
        """Send the commands in one write and read their replies, an error reply in its place: a
        decision's two calls and an event's or a small batch's on the shared connection (multiplex.py),
        a bulk write (more commands than ``BULK_COMMANDS``, or script calls applying more ``events``
        than ``BULK_EVENTS``) by :meth:`_bulk_write`."""
        if len(commands) <= BULK_COMMANDS and events <= BULK_EVENTS:
            return self._hot.execute(commands)
        return self._bulk_write(commands)

    async def _bulk_write(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """A bulk write, such as a platform's batch of 500 events: kept from delaying decisions.

        Redis answers one connection's commands in order, so on the shared connection a decision
        would wait for the whole batch (25 ms of Redis for 500 events) and every batch before it.
        On a connection of its own, it waits for the script call Redis is running: Redis takes turns
        between connections, reading up to 16 KB from each. Bulk writes go one at a time: with one
        connection each, eight batches in flight would put eight script calls ahead of every
        decision at each turn. The write is packed in parts, letting the event loop answer decisions
        in between (docs/performance.md measures all this).

        A write waits for its turn as long as the writes before it take; each has the store's timeout
        once sent. When one fails that way, the writes that were waiting behind it fail at once, as
        calls behind a late one on the shared connection do: Redis is as late for them."""
        parts: list[bytes] = []
        size = 0
        for command in commands:
            parts.append(pack([command]))
            size += len(parts[-1])
            if size >= _YIELD_BYTES:
                size = 0
                await asyncio.sleep(0)
        waiting_since = time.monotonic()
        async with self._bulk:
            if self._bulk_failed is not None and self._bulk_failed[0] >= waiting_since:
                raise rx.ConnectionError(f"a bulk write ahead of this one failed: {self._bulk_failed[1]}")
            try:
                return await self._pooled(b"".join(parts), len(commands))
            except (rx.ConnectionError, rx.TimeoutError, TimeoutError, OSError) as exc:
                self._bulk_failed = (time.monotonic(), exc)
                raise

    async def _pooled(self, packed: bytes, count: int) -> list[Any]:
        """``count`` commands, ``packed`` by hiredis, on a connection of the pool, without a pipeline's
        bookkeeping and its timer per reply. The replies share one timeout. A failure midway closes
        the connection: its unread replies would answer the next commands."""
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(packed)
            replies: list[Any] = []
            async with asyncio.timeout(connection.socket_timeout):
                for _ in range(count):
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except rx.ResponseError as exc:
                        replies.append(exc)
            return replies
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _load_scripts(self) -> None:
        """The scripts of :meth:`_apply`: the events' and the trigger schedule's, both then called by
        their SHA1."""
        applied, scheduled = await self._pipelined(
            [("SCRIPT", "LOAD", self._apply_src), ("SCRIPT", "LOAD", SCHEDULE_SOURCE)]
        )
        for reply in (applied, scheduled):
            if isinstance(reply, Exception):
                raise reply
        self._apply_sha = applied

    async def _apply(
        self,
        calls: Sequence[tuple[ProfileKeys, Sequence[Event]]],
        *,
        read: bool,
        trigger_ops: Sequence[TriggerOp] = (),
    ) -> list[tuple[list[int], Any]]:
        """Run ``apply.lua`` for every profile's events in one pipelined round trip, several profiles to a
        script call; re-send on NOSCRIPT. The trigger ops go in the same round trip, once (repeating them
        would change nothing). Returns each call's profiles (their places in ``calls``) and its reply
        (apply.lua says what it holds)."""
        config, now_ms = self._config, self.now_ms()
        schedule = schedule_args(trigger_ops, now_ms - config.dedupe_window_ms)
        head = [str(now_ms), str(config.profile_ttl_ms), str(config.dedupe_window_ms), "1" if read else "0"]
        head.append(str(config.contacts_ms))
        groups = _calls(calls, config.calls_by_slot)
        events = sum(len(batch) for _, batch in calls)
        packed: list[list[str]] = []
        for group in groups:
            script_keys: list[str] = []
            args = head.copy()
            for i in group:
                profile_keys, batch = calls[i]
                script_keys += profile_keys.script_keys()
                args.append(str(len(batch)))
                for event in batch:
                    args += script_args(event)
            packed.append([str(len(script_keys)), *script_keys, *args])
            if events > BULK_EVENTS:
                await asyncio.sleep(0)  # a batch's preparation lets the decisions' replies in (_bulk_write)
        results: list[Any] = [None] * len(groups)
        pending = list(range(len(groups)))
        async with translated():
            for _ in range(2):
                if self._apply_sha is None:
                    await self._load_scripts()
                commands: list[tuple[Any, ...]] = [("EVALSHA", self._apply_sha, *packed[g]) for g in pending]
                if schedule:
                    commands.append(("EVALSHA", SCHEDULE_SHA, 2, *SCHEDULE_KEYS, *schedule))
                replies = await self._pipelined(commands, events)
                if schedule:
                    scheduled, replies = replies[-1], replies[:-1]
                    if not isinstance(scheduled, rx.NoScriptError):
                        if isinstance(scheduled, Exception):
                            raise scheduled
                        schedule = []
                missing = []
                for g, reply in zip(pending, replies, strict=True):
                    if isinstance(reply, rx.NoScriptError):
                        missing.append(g)
                    elif isinstance(reply, Exception):
                        raise reply
                    else:
                        results[g] = reply
                if not missing and not schedule:
                    break
                # Redis restarted and lost its script cache; nothing of these calls ran.
                self._apply_sha = None
                pending = missing
            else:
                raise StoreUnavailable("the profile store keeps losing its scripts")
        return list(zip(groups, results, strict=True))
