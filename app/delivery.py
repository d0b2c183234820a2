"""Outbound webhook deliveries: the worker that empties the outbox (feature_store/outbox.py).

For each destination with messages and room (its ``concurrency`` less the attempts this worker has in
flight there), the worker claims due messages under a lease and POSTs each to the destination's url,
signed per Standard Webhooks (https://www.standardwebhooks.com/) with the secret held in the
environment variable the destination names. What an attempt comes to:

=============================================  ==================================================
the attempt                                    what follows
=============================================  ==================================================
answered 2xx                                   delivered, then ``on_delivered(message)``
answered 408, 429 or 5xx; no answer within     retried after a backoff, or after the answer's
the timeout; the connection failed             ``Retry-After``; a dead letter once the
                                               destination's ``attempts`` are spent
answered anything else (3xx, other 4xx)        a dead letter at once
the secret's variable is unset or not a        a dead letter naming the variable (set it,
Standard Webhooks secret                       restart, replay)
the destination is not in the live catalogue   a dead letter naming the destination
=============================================  ==================================================

The backoff is exponential with full jitter: after attempt ``n`` the wait is drawn uniformly between 0
and ``min(NBA_DELIVERY_BACKOFF_MAX_S, NBA_DELIVERY_BACKOFF_S * 2 ** (n - 1))``
(https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/). A ``Retry-After`` (seconds
or an HTTP date) replaces the draw, capped at ``NBA_DELIVERY_RETRY_AFTER_MAX_S``.

The secret goes nowhere but into the signature: not into logs, dead letters or any answer. Nor does
the url (it may carry a token) or the body (it carries profile features) go into logs.
docs/deliveries.md is the guide.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import httpx
import structlog
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from app import metrics
from app.settings import Settings
from feature_store import StoreUnavailable
from feature_store.outbox import Counts, DeadLetterOp, Handled, Message, Outbox
from policies.catalogue import Destination

log = structlog.get_logger("nba.delivery")

Clock = Callable[[], float]
OnDelivered = Callable[[Message], Awaitable[None]]

RETRIED_STATUSES: Final = frozenset({408, 429})  # and every 5xx
ORPHANS_PER_ROUND: Final = 100  # messages of a destination gone from the catalogue, dead-lettered per round
ANSWER_KEPT: Final = 200  # characters of a failed answer's body kept in the dead letter
USER_AGENT: Final = "nba-webhooks/1"


async def _nothing(_: Message) -> None:
    return None


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    poll_s: float = 1.0
    lease_margin_ms: int = 30_000
    backoff_s: float = 30.0
    backoff_max_s: float = 21_600.0
    retry_after_max_s: float = 3600.0

    @classmethod
    def of(cls, settings: Settings) -> DeliveryConfig:
        return cls(
            poll_s=settings.delivery_poll_s,
            lease_margin_ms=int(settings.delivery_lease_s * 1000),
            backoff_s=settings.delivery_backoff_s,
            backoff_max_s=settings.delivery_backoff_max_s,
            retry_after_max_s=settings.delivery_retry_after_max_s,
        )

    def ceiling_s(self, attempt: int) -> float:
        """The longest backoff after attempt number ``attempt`` (from 1)."""
        return min(self.backoff_max_s, self.backoff_s * 2.0 ** (attempt - 1))


def retry_after_s(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header in seconds from ``now``: delay-seconds or an HTTP date (RFC 9110, 10.2.3);
    ``None`` when absent or unreadable. A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by the RFC
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one attempt came to. ``reason`` is ``None`` when it was delivered."""

    status: int | None
    reason: str | None = None
    answer: str = ""  # the start of a failed answer's body, for the dead letter (not logged)
    retried: bool = False
    retry_after_s: float | None = None


class DeliveryWorker:
    """Delivers the outbox's messages to the live catalogue's destinations.

    ``run(stop)`` is the service's loop; ``round()`` is one claim-and-deliver step for tests and tools.
    ``destinations`` is called at every round, so a catalogue reload is followed. ``on_delivered`` is
    awaited after each message is recorded as delivered (not before, and never for a failed one).
    Time comes from ``clock`` and backoff draws from ``rng``, so tests move time instead of waiting.
    """

    def __init__(
        self,
        outbox: Outbox,
        destinations: Callable[[], Mapping[str, Destination]],
        config: DeliveryConfig | None = None,
        *,
        clock: Clock = time.time,
        on_delivered: OnDelivered = _nothing,
        client: httpx.AsyncClient | None = None,
        environ: Mapping[str, str] = os.environ,
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._destinations = destinations
        self._config = config or DeliveryConfig()
        self._clock = clock
        self._on_delivered = on_delivered
        self._owns_client = client is None
        # No redirects: a signed message goes to the url the catalogue names, nowhere else.
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._environ = environ
        self._rng = rng or random.Random()
        self._busy: dict[str, int] = {}  # attempts in flight here, per destination
        self._freed = asyncio.Event()  # set when one finishes: there may be room for another
        self._store_down = False

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then let the attempts in flight finish (each is bounded by its
        destination's timeout). Cancelled instead, it abandons them: their leases expire and another
        worker (or this one, restarted) makes them again."""
        async with asyncio.TaskGroup() as attempts:
            while not stop.is_set():
                self._freed.clear()
                try:
                    await self._claim(attempts)
                except StoreUnavailable as exc:
                    if not self._store_down:
                        log.warning("delivery_store_unavailable", error=str(exc))
                    self._store_down = True
                else:
                    self._store_down = False
                await _first(stop, self._freed, self._config.poll_s)

    async def round(self) -> int:
        """Claim what is due now and deliver it, waiting for every attempt to be settled. Returns how many
        messages were claimed."""
        async with asyncio.TaskGroup() as attempts:
            claimed = await self._claim(attempts)
        return claimed

    def _now_ms(self) -> int:
        # Rounded, not truncated: a clock moved by 1 ms reads 1 ms later, whatever the float error.
        return round(self._clock() * 1000)

    async def _claim(self, attempts: asyncio.TaskGroup) -> int:
        live = self._destinations()
        claimed = 0
        for name in sorted(await self._outbox.destinations()):
            destination = live.get(name)
            room = (destination.concurrency if destination else ORPHANS_PER_ROUND) - self._busy.get(name, 0)
            if room <= 0:
                continue
            # The lease outlasts the attempt (bounded by the timeout), so that no other worker claims it
            # while this one is still at it.
            lease_ms = (destination.timeout if destination else 0) + self._config.lease_margin_ms
            messages = await self._outbox.claim(name, self._now_ms(), lease_ms, room, os.urandom(8).hex())
            for message in messages:
                self._busy[name] = self._busy.get(name, 0) + 1
                attempts.create_task(self._attempt(message, destination))
            claimed += len(messages)
        return claimed

    async def _attempt(self, message: Message, destination: Destination | None) -> None:
        try:
            await self._deliver(message, destination)
        except StoreUnavailable as exc:
            # Not settled: the lease expires and the message is claimed again.
            log.warning("delivery_not_settled", message_id=message.id, error=str(exc))
        except Exception:
            # A bug. Logged with its traceback; the lease expires and the attempt is made again, until the
            # destination's attempts are spent and it is a dead letter: never silence.
            log.exception("delivery_failed_unexpectedly", message_id=message.id)
        finally:
            self._busy[message.destination] -= 1
            self._freed.set()

    async def _deliver(self, message: Message, destination: Destination | None) -> None:
        if destination is None:
            reason = (
                f"the live catalogue has no destination {message.destination!r}: add it (or correct the "
                "action's destination) and replay"
            )
            await self._give_up(message, _Answer(None, reason))
            return
        if message.attempts > destination.attempts:
            reason = (
                f"claimed for attempt {message.attempts} of {destination.attempts}: an earlier attempt did "
                "not finish (its worker stopped mid-delivery) or the destination's attempts were lowered"
            )
            await self._give_up(message, _Answer(None, reason))
            return
        signers = self._signers(destination)
        if isinstance(signers, str):
            await self._give_up(message, _Answer(None, signers))
            return

        started = time.perf_counter()
        answer = await self._post(message, destination, signers)
        metrics.DELIVERY_SECONDS.labels(message.destination).observe(time.perf_counter() - started)
        now_ms = self._now_ms()
        context = {"message_id": message.id, "destination": message.destination, "attempt": message.attempts}
        if answer.reason is None:
            if await self._outbox.delivered(message, now_ms, answer.status):
                metrics.delivery(message.destination, "delivered")
                log.info("delivery_delivered", status=answer.status, **context)
                try:
                    await self._on_delivered(message)
                except Exception:  # a bug in the callback; the delivery stands, and is not made again
                    log.exception("delivery_callback_failed", **context)
            else:
                self._lost(message)
        elif answer.retried and message.attempts < destination.attempts:
            delay_s = self._delay_s(message.attempts, answer.retry_after_s)
            due_ms = now_ms + math.ceil(delay_s * 1000)
            if await self._outbox.retry(message, now_ms, due_ms, _error(answer), answer.status):
                metrics.delivery(message.destination, "retry")
                log.info(
                    "delivery_retry", status=answer.status, reason=answer.reason, delay_s=delay_s, **context
                )
            else:
                self._lost(message)
        else:
            await self._give_up(message, answer)

    def _signers(self, destination: Destination) -> list[Webhook] | str:
        """The destination's signers, or why there are none (naming the variable, never its value).

        The variable holds one secret, or several separated by spaces while a secret is rotated: each
        signs, and the ``webhook-signature`` header carries every signature, as Standard Webhooks allows.
        """
        variable = destination.secret
        secrets = self._environ.get(variable, "").split()
        if not secrets:
            return (
                f"the signing secret is missing: the environment variable {variable} is not set; set it "
                "(whsec_ followed by base64), restart the service and replay"
            )
        try:
            return [Webhook(secret) for secret in secrets]
        except (ValueError, EmptyWebhookSecretError):
            return (
                f"the environment variable {variable} does not hold Standard Webhooks secrets (whsec_ "
                "followed by base64, several separated by spaces); correct it, restart the service and replay"
            )

    async def _post(self, message: Message, destination: Destination, signers: list[Webhook]) -> _Answer:
        now = self._clock()
        at = datetime.fromtimestamp(now, UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message.id,
            "webhook-timestamp": str(math.floor(now)),
            "webhook-signature": " ".join(signer.sign(message.id, at, message.body) for signer in signers),
        }
        timeout_s = destination.timeout / 1000
        try:
            # httpx's timeout bounds each phase (connect, each read...); this one bounds the attempt.
            async with (
                asyncio.timeout(timeout_s),
                self._client.stream(
                    "POST", destination.url, content=message.body.encode(), headers=headers, timeout=timeout_s
                ) as response,
            ):
                head = b""
                async for chunk in response.aiter_bytes():
                    head += chunk
                    if len(head) > 4 * ANSWER_KEPT:
                        break  # enough to say what went wrong; the rest is not read
        except (TimeoutError, httpx.TimeoutException):
            return _Answer(None, f"no answer within {timeout_s:g}s (the destination's timeout)", retried=True)
        except httpx.RequestError as exc:
            described = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return _Answer(None, f"the request failed ({described})", retried=True)
        status = response.status_code
        if response.is_success:
            return _Answer(status)
        reason = f"answered {status}"
        if response.is_redirect:
            reason += " (deliveries do not follow redirects: set the destination's url to the final address)"
        retried = status in RETRIED_STATUSES or status >= 500
        return _Answer(
            status,
            reason,
            " ".join(head.decode(errors="replace").split())[:ANSWER_KEPT],
            retried,
            retry_after_s(response.headers.get("retry-after"), now) if retried else None,
        )

    def _delay_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._config.retry_after_max_s)
        return self._rng.uniform(0, self._config.ceiling_s(attempt))

    async def _give_up(self, message: Message, answer: _Answer) -> None:
        if await self._outbox.dead(message, self._now_ms(), _error(answer), answer.status):
            metrics.delivery(message.destination, "dead")
            log.warning(
                "delivery_dead",
                message_id=message.id,
                destination=message.destination,
                attempts=message.attempts,
                status=answer.status,
                reason=answer.reason,
            )
        else:
            self._lost(message)

    def _lost(self, message: Message) -> None:
        log.warning(
            "delivery_lease_lost",
            message_id=message.id,
            destination=message.destination,
            detail="the lease expired and another worker claimed it; it may be delivered twice",
        )


def _error(answer: _Answer) -> str:
    """What a dead letter (or a retried message) keeps of a failed attempt."""
    assert answer.reason is not None
    return f"{answer.reason}: {answer.answer}" if answer.answer else answer.reason


async def _first(one: asyncio.Event, other: asyncio.Event, timeout_s: float) -> None:
    """Wait until either event is set, at most ``timeout_s``."""
    waits = [asyncio.create_task(one.wait()), asyncio.create_task(other.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


# What the operator endpoints call (app/routes/deliveries.py) ------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    letters: list[Message]
    next_cursor: str | None
    counts: Counts


async def dead_letters(outbox: Outbox, limit: int, cursor: str | None) -> DeadLetterPage:
    letters, following = await outbox.dead_letters(limit, cursor)
    return DeadLetterPage(letters, following, await outbox.counts())


async def dead_letters_do(
    outbox: Outbox, op: DeadLetterOp, ids: Sequence[str] | None, now_ms: int
) -> Handled:
    """Replay or discard these dead letters, or (``ids`` is ``None``) all of them."""
    if ids is None:
        return Handled(await (outbox.replay_all if op == "replay" else outbox.discard_all)(now_ms), ())
    return await (outbox.replay if op == "replay" else outbox.discard)(ids, now_ms)
