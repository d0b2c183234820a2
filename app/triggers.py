"""Firing timed triggers: claim what is due, decide as for a web request, deliver what was chosen.

Events start and cancel trigger instances as they are ingested (``Services.ingest`` and ``decide``
compute the ops; feature_store/triggers.py keeps them). This worker, one per API process, claims due
instances and fires each:

1. a trigger no longer in the catalogue, or found due more than its ``late`` ago (the service was
   down), is dropped and logged, not fired;
2. the decision id is derived from the instance and its due time. If that decision exists, a worker
   that claimed this instance before died after deciding: the decision is not made again, and only
   its deliveries are (re)enqueued, which the outbox keeps to one per decision and action;
3. the trigger's ``condition`` is checked against the profile as it is now; if it does not hold,
   nothing is decided;
4. the decision runs the same funnel as ``POST /v1/decide`` for the trigger's placement, with the
   context ``{"trigger": <id>}``: holdout (a control customer gets nothing, and the counterfactual is
   logged), consent, contact policy, arbitration, logging and learning;
5. each chosen action that names a destination is enqueued for delivery (app/delivery.py) with the
   profile features it ``needs``; the contact is recorded when the delivery succeeds, not before.
   An action without a destination is recorded as served, as a web decision's is, for a platform
   that reads the decision log or its own trigger decisions.

A fallback (the store failing or slow) leaves the instance claimed: its lease runs out and it is tried
again. Time is injected (``clock``), so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from app import metrics
from app.schemas import DecideIn
from app.services import Services
from feature_store import IdKind, StoreUnavailable
from feature_store.features import features
from feature_store.keys import ProfileKeys
from feature_store.outbox import Outbox, delivery
from feature_store.triggers import Firing, TriggerStore
from models.stopping import pause
from policies.catalogue import Catalogue, CompiledTrigger
from policies.rules import RuleEvaluationError

log = structlog.get_logger("nba.triggers")

FIRE_BUDGET_MS = 2_000  # a firing is not on anyone's page: it may take longer than a web decision


def fired_decision_id(firing: Firing) -> str:
    """The same for every attempt to fire one instance: time-ordered like every decision id."""
    digest = hashlib.sha256(firing.member.encode()).hexdigest()[:16]
    return f"d-{firing.due_ms:012x}{digest}"


@dataclass(frozen=True, slots=True)
class Fired:
    """What became of one firing: ``decided``, or why not (``dropped:<reason>``), and what was
    enqueued."""

    outcome: str
    decision_id: str | None = None
    enqueued: int = 0


class TriggerWorker:
    def __init__(
        self,
        services: Services,
        triggers: TriggerStore,
        outbox: Outbox,
        *,
        clock: Callable[[], float] = time.time,
        lease_ms: int = 30_000,
        batch: int = 100,
    ) -> None:
        self.services, self.triggers, self.outbox = services, triggers, outbox
        self.clock, self.lease_ms, self.batch = clock, lease_ms, batch

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self, stop: asyncio.Event, every_s: float) -> None:
        """Fire what is due every ``every_s``, until ``stop``; a store outage only delays it."""
        while not stop.is_set():
            with contextlib.suppress(StoreUnavailable):
                while await self.round() == self.batch and not stop.is_set():
                    pass  # a backlog (the service was down): go on without waiting
            await pause(stop, every_s)

    async def round(self) -> int:
        """Claim what is due and fire it; how many were claimed."""
        claimed = await self.triggers.claim(self._now_ms(), self.lease_ms, self.batch)
        for firing in claimed:
            fired = await self.fire(firing)
            if fired.outcome != "fallback":
                await self.triggers.done(firing)
        return len(claimed)

    async def fire(self, firing: Firing) -> Fired:
        """Fire one claimed instance (see the module's docstring) and count what became of it."""
        fired = await self._fire(firing)
        metrics.trigger_fired(firing.trigger_id, fired.outcome)
        return fired

    async def _fire(self, firing: Firing) -> Fired:
        catalogue = self.services.catalogues.live
        trigger = catalogue.triggers.get(firing.trigger_id)
        # `customer` is logged as a pseudonym, never raw (app/logging.py).
        bound = log.bind(trigger=firing.trigger_id, customer=firing.ref, due_ms=firing.due_ms)
        if trigger is None:
            bound.warning("trigger_dropped", reason="not_in_catalogue")
            return Fired("dropped:not_in_catalogue")
        late_ms = self._now_ms() - firing.due_ms
        if late_ms > trigger.spec.late:
            bound.warning("trigger_dropped", reason="late", late_s=round(late_ms / 1000))
            return Fired("dropped:late")
        decision_id = fired_decision_id(firing)
        profile_keys = ProfileKeys.parse(firing.ref)
        store = self.services.store
        read = await store.apply_and_read(profile_keys, [])
        if not read.raw.exists:  # erased since it started
            bound.info("trigger_dropped", reason="no_profile")
            return Fired("dropped:no_profile")
        customer = read.keys.kind is IdKind.CUSTOMER
        seen = features(
            read.raw, self._now_ms(), catalogue.event_types, known=customer, rules=store.stage_rules
        )
        summary = await self.services.store.decision(decision_id)
        if summary is None:
            if not _holds(trigger, seen, bound):
                return Fired("dropped:condition")
            body = DecideIn(
                customer_id=profile_keys.id,
                placement=trigger.spec.placement,
                context={"trigger": trigger.id},
            )
            answer = await self.services.decide(body, decision_id=decision_id, budget_ms=FIRE_BUDGET_MS)
            if answer["fallback"]:
                bound.warning("trigger_fallback", decision_id=decision_id)
                return Fired("fallback", decision_id)
            chosen = [a["action_id"] for a in answer["actions"]]
            versions = answer["policy_version"], answer["model_version"]
        else:  # decided before, by a worker that died before it was done
            chosen = [a["action_id"] for a in json.loads(summary.get("actions", "[]"))]
            versions = None, None
        enqueued = await self._deliver(catalogue, trigger, firing, decision_id, chosen, seen, versions)
        bound.info("trigger_fired", decision_id=decision_id, actions=chosen, enqueued=enqueued)
        return Fired("decided", decision_id, enqueued)

    async def _deliver(
        self,
        catalogue: Catalogue,
        trigger: CompiledTrigger,
        firing: Firing,
        decision_id: str,
        chosen: list[str],
        seen: dict[str, Any],
        versions: tuple[str | None, str | None],
    ) -> int:
        enqueued = 0
        now_ms = self._now_ms()
        for action_id in chosen:
            action = catalogue.actions.get(action_id)
            if action is None or action.spec.destination is None:
                continue
            message = delivery(
                decision_id=decision_id,
                customer=firing.ref,
                action_id=action_id,
                channel=action.spec.channel,
                destination=action.spec.destination,
                payload=action.spec.payload,
                profile={name: seen.get(name) for name in action.spec.needs},
                time_ms=now_ms,
                trigger=trigger.id,
                placement=trigger.spec.placement,
                policy_version=versions[0],
                model_version=versions[1],
            )
            enqueued += int(await self.outbox.enqueue(message, now_ms))
        return enqueued


def _holds(trigger: CompiledTrigger, seen: dict[str, Any], bound: Any) -> bool:
    try:
        if trigger.condition.evaluate(seen, {"trigger": trigger.id}):
            return True
        bound.info("trigger_dropped", reason="condition")
    except RuleEvaluationError as exc:
        bound.warning("trigger_dropped", reason="condition_error", error=str(exc))
    return False
