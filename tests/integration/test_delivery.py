"""Webhook deliveries on a real Redis to a real HTTP receiver on loopback: retries on the schedule the
backoff and Retry-After say, one webhook-id across attempts, signatures a receiver verifies, dead letters
and replays, a worker killed mid-delivery, two workers at once, and secrets that go nowhere.

The worker is driven by hand (``round``) on the tests' clock, so that the time of every retry is exact;
only the tests of its loop run ``DeliveryWorker.run`` as a task. The receiver is a small HTTP/1.1 server
on 127.0.0.1 that answers each request with the next reply of its script.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
import redis
import structlog
from redis.crc import key_slot
from standardwebhooks.webhooks import Webhook

from app import delivery as delivery_module
from app.delivery import DeliveryConfig, DeliveryWorker, retry_after_s
from feature_store import ProfileStore
from feature_store import keys as store_keys
from feature_store.outbox import KEEP_DELIVERED_MS, Counts, Handled, Message, Outbox, delivery, message_id
from policies.catalogue import Destination
from tests.conftest import Clock
from tests.integration.test_learner import until

VARIABLE = "NBA_TEST_HOOK_SECRET"
SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, fine.").decode()
SECRET_BYTES = SECRET.removeprefix("whsec_")
CONFIG = DeliveryConfig(
    poll_s=0.05, lease_margin_ms=5_000, backoff_s=1, backoff_max_s=60, retry_after_max_s=60
)
SEED = 7


# A real receiver ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = "ok"
    hang: bool = False  # never answer (until the receiver stops)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: str


class Receiver:
    """An HTTP/1.1 server on 127.0.0.1, on a port of its own. Each request gets the next reply of the
    script; the last one repeats. It notes what it received and any webhook-id received twice at once."""

    def __init__(self, *replies: Reply) -> None:
        self._replies = replies or (Reply(),)
        self.requests: list[Received] = []
        self.overlapping: list[str] = []
        self._open: Counter[str] = Counter()
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}/hooks"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stopped.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not await reader.readline():  # the request line
                return
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            reply = self._replies[min(len(self.requests), len(self._replies) - 1)]
            self.requests.append(Received(headers, body.decode()))
            webhook_id = headers.get("webhook-id", "")
            self._open[webhook_id] += 1
            if self._open[webhook_id] > 1:
                self.overlapping.append(webhook_id)
            try:
                if reply.hang:
                    await self._stopped.wait()
                    return
                await asyncio.sleep(reply.delay_s)
            finally:
                self._open[webhook_id] -= 1
            content = reply.body.encode()
            head = f"HTTP/1.1 {reply.status} Reply\r\ncontent-length: {len(content)}\r\nconnection: close\r\n"
            head += "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
            writer.write(head.encode() + b"\r\n" + content)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


# Helpers -----------------------------------------------------------------------------------------------


def crm(url: str, **overrides: Any) -> Destination:
    """A destination with a 1 s timeout (the shortest a catalogue can say) and 4 attempts."""
    return Destination(url=url, secret=VARIABLE, **{"timeout": 1, "attempts": 4, **overrides})


def message(
    clock: Clock, decision: str = "d-1", destination: str = "crm", customer: str = "c:c-42"
) -> Message:
    return delivery(
        decision_id=decision,
        customer=customer,
        action_id="cart_email",
        channel="email",
        destination=destination,
        payload={"template": "cart-1"},
        profile={"cart_value": 39.8, "cart_items": 2},
        time_ms=now_ms(clock),
        trigger="cart_abandoned_30m",
        placement="email.cart_recovery",
        policy_version="test-1",
        model_version="prior",
    )


@contextlib.asynccontextmanager
async def worker(
    store: ProfileStore,
    clock: Clock,
    destinations: Mapping[str, Destination],
    *,
    environ: Mapping[str, str] | None = None,
    delivered: list[Message] | None = None,
    config: DeliveryConfig = CONFIG,
) -> AsyncIterator[DeliveryWorker]:
    async def note(m: Message) -> None:
        if delivered is not None:
            delivered.append(m)

    made = DeliveryWorker(
        store.outbox(),
        lambda: destinations,
        config,
        clock=clock,
        on_delivered=note,
        environ={VARIABLE: SECRET} if environ is None else environ,
        rng=random.Random(SEED),
    )
    try:
        yield made
    finally:
        await made.aclose()


def now_ms(clock: Clock) -> int:
    """The clock in milliseconds, as the worker reads it."""
    return round(clock() * 1000)


def due_ms(raw_redis: redis.Redis, m: Message) -> int:
    score = raw_redis.zscore(store_keys.outbox_due(m.destination), m.id)
    assert score is not None, f"{m.id} is not waiting"
    return int(score)  # type: ignore[arg-type]


def verified(request: Received) -> Any:
    """The body, once its signature is verified as a receiver would (within 5 minutes of the real now)."""
    return Webhook(SECRET).verify(request.body, request.headers)


async def stored(outbox: Outbox, m: Message) -> Message:
    found = await outbox.message(m.id)
    assert found is not None
    return found


# The outbox --------------------------------------------------------------------------------------------


async def test_enqueuing_is_idempotent_by_id_even_after_delivery(store: ProfileStore, clock: Clock) -> None:
    outbox, m = store.outbox(), message(clock)
    now = now_ms(clock)
    assert await outbox.enqueue(m, now) is True
    assert await outbox.enqueue(m, now) is False  # already enqueued: an answer, not an error
    assert (await outbox.counts()).due == 1
    [claimed] = await outbox.claim("crm", now, 1000, 10, "t")
    assert await outbox.delivered(claimed, now, 200)
    assert await outbox.enqueue(m, now) is False  # a trigger that fires again after the delivery
    kept = await stored(outbox, m)
    assert (kept.state, kept.body) == ("delivered", "")  # kept a while, without the profile features
    assert await outbox.counts() == Counts(due=0, in_flight=0, dead=0)


async def test_a_claim_leases_each_message_to_one_claimant_until_its_lease_expires(
    store: ProfileStore, clock: Clock
) -> None:
    outbox, now = store.outbox(), now_ms(clock)
    messages = [message(clock, f"d-{i}") for i in range(3)]
    for m in messages:
        await outbox.enqueue(m, now)
    await outbox.enqueue(message(clock, "d-later"), now + 60_000)
    first = await outbox.claim("crm", now, 1000, 10, "first")
    assert sorted(m.id for m in first) == sorted(m.id for m in messages)  # not the one due later
    assert {(m.attempts, m.state, m.lease) for m in first} == {(1, "leased", "first")}
    assert await outbox.claim("crm", now + 999, 1000, 10, "second") == []
    assert (await outbox.counts()).in_flight == 3

    again = await outbox.claim("crm", now + 1000, 1000, 10, "second")  # the first claimant is presumed dead
    assert sorted(m.id for m in again) == sorted(m.id for m in messages)
    assert {m.attempts for m in again} == {2}
    assert not await outbox.delivered(first[0], now + 1001)  # the first claimant lost its lease
    assert not await outbox.dead(first[1], now + 1001, "late")
    assert await outbox.delivered(next(m for m in again if m.id == first[0].id), now + 1001)
    assert (await outbox.counts()).in_flight == 2


async def test_dead_letters_page_by_cursor_in_the_order_they_died_and_replay_all_brings_them_back(
    store: ProfileStore, clock: Clock
) -> None:
    outbox, now = store.outbox(), now_ms(clock)
    ids = []
    for i in range(5):
        m = message(clock, f"d-{i}")
        await outbox.enqueue(m, now)
        [claimed] = await outbox.claim("crm", now, 1000, 1, "t")
        # Three die in one millisecond: the cursor must still step over each exactly once.
        assert await outbox.dead(claimed, now + (0 if i < 3 else i), f"answered 400: no {i}", 400)
        ids.append(m.id)
    pages, cursor = [], None
    while True:
        letters, cursor = await outbox.dead_letters(2, cursor)
        pages.append([m.id for m in letters])
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [i for page in pages for i in page]
    assert sorted(listed[:3]) == sorted(ids[:3])
    assert listed[3:] == ids[3:]
    assert (await outbox.counts()).dead == 5

    assert await outbox.replay_all(now + 10) == 5
    assert await outbox.counts() == Counts(due=5, in_flight=0, dead=0)
    assert {(await stored(outbox, message(clock, f"d-{i}"))).attempts for i in range(5)} == {0}
    assert await outbox.dead_letters(10) == ([], None)


async def test_a_discarded_dead_letter_is_never_sent_and_leaves_nothing_of_the_customer_but_its_id(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    outbox, now = store.outbox(), now_ms(clock)
    # A customer id with the characters its index key escapes: the script must find the same key.
    customer = "c:50%{off}"
    ms = [message(clock, f"d-{i}", customer=customer) for i in range(3)]
    for m in ms:
        await outbox.enqueue(m, now)
        [claimed] = await outbox.claim("crm", now, 1000, 1, "t")
        assert await outbox.dead(claimed, now, "answered 410: gone", 410)
    index = store_keys.outbox_customer(customer)
    assert raw_redis.smembers(index) == {m.id for m in ms}

    assert await outbox.discard([ms[0].id, "msg_unknown"], now + 1) == Handled(1, ("msg_unknown",))
    assert await outbox.discard([ms[0].id], now + 2) == Handled(0, (ms[0].id,))  # not a dead letter now
    gone = await stored(outbox, ms[0])
    assert (gone.state, gone.body) == ("discarded", "")
    assert 0 < raw_redis.pttl(store_keys.outbox_message(ms[0].id)) <= KEEP_DELIVERED_MS
    assert raw_redis.smembers(index) == {ms[1].id, ms[2].id}
    assert not await outbox.enqueue(ms[0], now + 3)  # the same message again: still a no-op
    assert await outbox.counts() == Counts(due=0, in_flight=0, dead=2)

    assert await outbox.discard_all(now + 4) == 2
    assert await outbox.counts() == Counts(due=0, in_flight=0, dead=0)
    assert await outbox.dead_letters(10) == ([], None)
    assert raw_redis.smembers(index) == set()
    assert await outbox.claim("crm", now + 10_000_000, 1000, 10, "t2") == []  # nothing is ever sent


def test_the_body_carries_the_decision_the_action_and_the_features_it_needs(clock: Clock) -> None:
    m = message(clock)
    assert m.id == message_id("d-1", "cart_email") == message(clock).id  # the same on every call
    body = json.loads(m.body)
    assert body == {
        "type": "action.chosen",
        "timestamp": datetime.fromtimestamp(m.created_ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6]
        + "Z",
        "data": {
            "decision_id": "d-1",
            "customer_id": "c-42",
            "action_id": "cart_email",
            "channel": "email",
            "payload": {"template": "cart-1"},
            "profile": {"cart_value": 39.8, "cart_items": 2},
            "trigger": "cart_abandoned_30m",
            "placement": "email.cart_recovery",
            "policy_version": "test-1",
            "model_version": "prior",
        },
    }
    anonymous = json.loads(message(clock, customer="a:v-7").body)["data"]
    assert anonymous["anonymous_id"] == "v-7"
    assert "customer_id" not in anonymous


# Retries, signatures, dead letters ---------------------------------------------------------------------


async def test_a_500_a_timeout_and_a_429_are_retried_on_schedule_and_the_delivery_arrives_once_signed(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis
) -> None:
    script = (
        Reply(500, body="try later"),
        Reply(hang=True),
        Reply(429, headers={"Retry-After": "7"}),
        Reply(200),
    )
    delivered: list[Message] = []
    draws = random.Random(SEED)  # the worker's backoff draws, in order
    async with (
        Receiver(*script) as receiver,
        worker(store, clock, {"crm": crm(receiver.url)}, delivered=delivered) as w,
    ):
        m = message(clock)
        outbox = store.outbox()
        await outbox.enqueue(m, now_ms(clock))
        attempted_at = []

        async def attempt() -> None:
            attempted_at.append(math.floor(clock()))
            assert await w.round() == 1

        # 1: answered 500. The wait is drawn between 0 and 1 s (backoff 1 s).
        await attempt()
        wait_ms = math.ceil(draws.uniform(0, 1) * 1000)
        assert due_ms(raw_redis, m) == now_ms(clock) + wait_ms
        assert (await stored(outbox, m)).last_error == "answered 500: try later"
        clock.advance((wait_ms - 1) / 1000)
        assert await w.round() == 0  # not a millisecond early
        clock.advance(0.001)

        # 2: no answer within the 1 s timeout. The wait is drawn between 0 and 2 s.
        await attempt()
        wait_ms = math.ceil(draws.uniform(0, 2) * 1000)
        assert due_ms(raw_redis, m) == now_ms(clock) + wait_ms
        assert (await stored(outbox, m)).last_status is None
        clock.advance(wait_ms / 1000)

        # 3: answered 429 with Retry-After: 7. The wait is 7 s exactly, no draw.
        await attempt()
        assert due_ms(raw_redis, m) == now_ms(clock) + 7000
        clock.advance(6.999)
        assert await w.round() == 0
        clock.advance(0.001)

        # 4: answered 200.
        await attempt()
        assert len(delivered) == 1
        clock.advance(3600)
        assert await w.round() == 0  # delivered once: nothing more to do

    assert receiver.ids() == [m.id] * 4  # the same webhook-id on every attempt
    for request, at in zip(receiver.requests, attempted_at, strict=True):
        assert verified(request) == json.loads(m.body)  # a fresh signature for each attempt's timestamp
        assert request.headers["webhook-timestamp"] == str(at)
        assert request.headers["content-type"] == "application/json"
    [got] = delivered
    assert (got.id, got.attempts, got.body) == (m.id, 4, m.body)
    kept = await stored(outbox, m)
    assert (kept.state, kept.attempts, kept.last_status, kept.last_error) == ("delivered", 4, 200, None)
    assert await outbox.counts() == Counts(due=0, in_flight=0, dead=0)


async def test_a_receiver_that_keeps_failing_makes_a_dead_letter_after_the_destinations_attempts(
    store: ProfileStore, clock: Clock
) -> None:
    delivered: list[Message] = []
    async with (
        Receiver(Reply(503, body="down")) as receiver,
        worker(store, clock, {"crm": crm(receiver.url, attempts=3)}, delivered=delivered) as w,
    ):
        m = message(clock)
        outbox = store.outbox()
        await outbox.enqueue(m, now_ms(clock))
        for _ in range(3):
            assert await w.round() == 1
            clock.advance(CONFIG.backoff_max_s)
        assert await w.round() == 0
    assert receiver.ids() == [m.id] * 3
    assert delivered == []  # a failed delivery is no contact
    [letter], _ = await outbox.dead_letters(10)
    assert (letter.id, letter.attempts, letter.last_status) == (m.id, 3, 503)
    assert letter.last_error == "answered 503: down"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "answered 400: missing email"),
        (404, "answered 404: missing email"),
        (301, "answered 301 (deliveries do not follow redirects"),
    ],
)
async def test_a_4xx_or_a_redirect_is_a_dead_letter_at_once(
    store: ProfileStore, clock: Clock, status: int, reason: str
) -> None:
    reply = Reply(status, headers={"Location": "http://127.0.0.1:9/elsewhere"}, body="missing email")
    async with Receiver(reply) as receiver, worker(store, clock, {"crm": crm(receiver.url)}) as w:
        m = message(clock)
        await store.outbox().enqueue(m, now_ms(clock))
        assert await w.round() == 1
        clock.advance(CONFIG.backoff_max_s)
        assert await w.round() == 0
    assert len(receiver.requests) == 1
    [letter], _ = await store.outbox().dead_letters(10)
    assert (letter.attempts, letter.last_status) == (1, status)
    assert str(letter.last_error).startswith(reason)


async def test_a_connection_refused_is_retried(store: ProfileStore, clock: Clock) -> None:
    async with Receiver() as receiver:
        url = receiver.url  # a port that was just free, and is closed again below
    async with worker(store, clock, {"crm": crm(url, attempts=2)}) as w:
        m = message(clock)
        await store.outbox().enqueue(m, now_ms(clock))
        assert await w.round() == 1
        first = await stored(store.outbox(), m)
        assert first.state == "due"
        assert str(first.last_error).startswith("the request failed (ConnectError")
        clock.advance(CONFIG.backoff_max_s)
        assert await w.round() == 1
    assert (await stored(store.outbox(), m)).state == "dead"


# Crashes and concurrency -------------------------------------------------------------------------------


async def test_a_worker_killed_mid_delivery_is_followed_by_a_retry_once_its_lease_expires(
    store: ProfileStore, clock: Clock
) -> None:
    delivered: list[Message] = []
    async with Receiver(Reply(hang=True), Reply(200)) as receiver:
        destinations = {"crm": crm(receiver.url)}
        m = message(clock)
        await store.outbox().enqueue(m, now_ms(clock))
        async with worker(store, clock, destinations) as doomed:
            killed = asyncio.create_task(doomed.round())
            await until(lambda: _true(len(receiver.requests) == 1), 5, "the first worker's attempt")
            killed.cancel()  # as if its process died: it neither settles nor releases the lease
            with contextlib.suppress(asyncio.CancelledError):
                await killed
        async with worker(store, clock, destinations, delivered=delivered) as successor:
            assert await successor.round() == 0  # the lease holds while the first one might still be at it
            clock.advance((1000 + CONFIG.lease_margin_ms) / 1000)  # the timeout and the margin
            assert await successor.round() == 1
    assert receiver.ids() == [m.id, m.id]
    assert verified(receiver.requests[1]) == json.loads(m.body)
    assert [(d.id, d.attempts) for d in delivered] == [(m.id, 2)]
    assert (await stored(store.outbox(), m)).state == "delivered"


async def _true(value: bool) -> bool:
    return value


async def test_two_workers_claiming_at_once_never_deliver_one_message_twice(
    store: ProfileStore, clock: Clock
) -> None:
    delivered: list[Message] = []
    async with Receiver(Reply(200, delay_s=0.01)) as receiver:
        destinations = {"crm": crm(receiver.url, concurrency=3)}
        messages = [message(clock, f"d-{i}") for i in range(20)]
        for m in messages:
            await store.outbox().enqueue(m, now_ms(clock))
        async with (
            worker(store, clock, destinations, delivered=delivered) as one,
            worker(store, clock, destinations, delivered=delivered) as other,
        ):
            async with asyncio.timeout(30):
                while len(delivered) < len(messages):
                    claimed = await asyncio.gather(one.round(), other.round())
                    assert all(n <= 3 for n in claimed)  # each within its concurrency
    assert receiver.overlapping == []
    assert Counter(receiver.ids()) == Counter({m.id: 1 for m in messages})
    assert sorted(d.id for d in delivered) == sorted(m.id for m in messages)


async def test_run_delivers_in_the_background_and_stops_when_told(store: ProfileStore, clock: Clock) -> None:
    delivered: list[Message] = []
    async with (
        Receiver() as receiver,
        worker(store, clock, {"crm": crm(receiver.url)}, delivered=delivered) as w,
    ):
        stop = asyncio.Event()
        running = asyncio.create_task(w.run(stop))
        try:
            m = message(clock)
            await store.outbox().enqueue(m, now_ms(clock))
            await until(lambda: _true(len(delivered) == 1), 5, "the delivery")
        finally:
            stop.set()
            async with asyncio.timeout(5):
                await running
    assert receiver.ids() == [m.id]


# Secrets and destinations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, f"the environment variable {VARIABLE} is not set"),
        ({VARIABLE: " "}, f"the environment variable {VARIABLE} is not set"),
        ({VARIABLE: "whsec_"}, f"the environment variable {VARIABLE} does not hold Standard Webhooks"),
    ],
    ids=["unset", "blank", "empty-after-prefix"],
)
async def test_a_missing_secret_is_a_dead_letter_naming_the_variable_and_replays_once_it_is_set(
    store: ProfileStore, clock: Clock, environ: dict[str, str], reason: str
) -> None:
    async with Receiver() as receiver:
        destinations = {"crm": crm(receiver.url)}
        m = message(clock)
        outbox = store.outbox()
        await outbox.enqueue(m, now_ms(clock))
        async with worker(store, clock, destinations, environ=environ) as unset:
            assert await unset.round() == 1
        assert receiver.requests == []  # nothing was sent unsigned
        [letter], _ = await outbox.dead_letters(10)
        assert reason in str(letter.last_error)
        assert (letter.attempts, letter.last_status) == (1, None)

        replayed = await outbox.replay([m.id, "msg_unknown"], now_ms(clock))
        assert replayed == Handled(1, ("msg_unknown",))
        async with worker(store, clock, destinations) as restarted:  # with the variable set
            assert await restarted.round() == 1
    assert receiver.ids() == [m.id]
    assert verified(receiver.requests[0]) == json.loads(m.body)
    assert (await stored(outbox, m)).state == "delivered"


async def test_while_a_secret_is_rotated_each_of_the_two_verifies_the_delivery(
    store: ProfileStore, clock: Clock
) -> None:
    new = "whsec_" + base64.b64encode(b"the secret that replaces the old").decode()
    async with Receiver() as receiver:
        m = message(clock)
        await store.outbox().enqueue(m, now_ms(clock))
        destinations = {"crm": crm(receiver.url)}
        async with worker(store, clock, destinations, environ={VARIABLE: f"{new} {SECRET}"}) as w:
            assert await w.round() == 1
    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, new):  # a receiver that has either one accepts it
        assert Webhook(secret).verify(request.body, request.headers) == json.loads(m.body)


async def test_the_secret_is_never_logged_nor_stored(
    store: ProfileStore, clock: Clock, raw_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Receiver(Reply(500), Reply(400), Reply(200)) as receiver:
        destinations = {"crm": crm(receiver.url, attempts=2)}
        outbox = store.outbox()
        for decision in ("d-1", "d-2", "d-3"):
            await outbox.enqueue(message(clock, decision), now_ms(clock))
        with structlog.testing.capture_logs() as logged:
            # A fresh logger: the module's own cached its configuration at first use, in an earlier test.
            monkeypatch.setattr(delivery_module, "log", structlog.get_logger("nba.delivery"))
            async with worker(store, clock, destinations) as w:
                for _ in range(3):
                    await w.round()
                    clock.advance(CONFIG.backoff_max_s)
            await outbox.replay_all(now_ms(clock))
            async with worker(store, clock, destinations, environ={}) as unset:
                await unset.round()
    events = [entry["event"] for entry in logged]
    assert {"delivery_retry", "delivery_delivered", "delivery_dead"} <= set(events), events
    log_text = json.dumps(logged, default=str)
    assert VARIABLE in log_text  # named, as the reason of the dead letters
    assert receiver.url not in log_text  # a url may carry a token of its own: not logged either
    stored_text = json.dumps(
        [raw_redis.hgetall(key) for key in raw_redis.scan_iter(f"{store_keys.OUTBOX_MESSAGE_PREFIX}*")]
    )
    assert "d-1" in stored_text  # the messages were read
    for text in (log_text, stored_text):
        assert SECRET_BYTES not in text


async def test_a_destination_gone_from_the_catalogue_dead_letters_its_messages(
    store: ProfileStore, clock: Clock
) -> None:
    async with Receiver() as receiver, worker(store, clock, {"crm": crm(receiver.url)}) as w:
        await store.outbox().enqueue(message(clock, destination="old-crm"), now_ms(clock))
        assert await w.round() == 1
    assert receiver.requests == []
    [letter], _ = await store.outbox().dead_letters(10)
    assert "no destination 'old-crm'" in str(letter.last_error)


# Pure parts --------------------------------------------------------------------------------------------


def test_every_outbox_key_is_in_one_slot() -> None:
    """One script moves a message between these keys, and derives some of them from the prefixes."""
    outbox_keys = [
        store_keys.outbox_message("msg_1"),
        store_keys.outbox_due("crm"),
        store_keys.outbox_leased("crm"),
        store_keys.OUTBOX_DEAD,
        store_keys.OUTBOX_DESTINATIONS,
    ]
    assert len({key_slot(key.encode()) for key in outbox_keys}) == 1


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = 1_800_000_000.0
    in_90s = format_datetime(datetime.fromtimestamp(now + 90, UTC), usegmt=True)
    assert retry_after_s("120", now) == 120.0
    assert retry_after_s(" 0 ", now) == 0.0
    assert retry_after_s(in_90s, now) == 90.0
    assert retry_after_s(format_datetime(datetime.fromtimestamp(now - 90, UTC), usegmt=True), now) == 0.0
    assert retry_after_s("soon", now) is None
    assert retry_after_s("-5", now) is None
    assert retry_after_s(None, now) is None


def test_the_backoff_ceiling_doubles_from_the_first_wait_up_to_the_cap() -> None:
    config = DeliveryConfig(backoff_s=30, backoff_max_s=3600)
    assert [config.ceiling_s(n) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
