"""What the routes call: one method per use case, schemas in, schemas out. No HTTP here."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog

from app import metrics
from app.auth import KeyRing
from app.budgets import Budgets
from app.catalogues import Catalogues
from app.errors import InvalidInput, NotFound
from app.schemas import (
    DecideIn,
    EventBatchIn,
    EventFields,
    EventIn,
    EventsAccepted,
    IdentityIn,
    IdentityLinked,
    OutcomeBatchIn,
    OutcomeError,
    OutcomeIn,
    OutcomesAccepted,
    ProfileOut,
)
from app.settings import Settings
from app.snapshots import Models
from feature_store import Event, IdKind, ProfileStore, StageRules, StoreConfig, StoreUnavailable
from feature_store import keys as store_keys
from feature_store.features import NEVER, features, touched
from feature_store.outbox import Message
from feature_store.profile import ContactRecord, contacts, held_out, iso
from feature_store.store import DecisionRecord, Ingested
from feature_store.triggers import TriggerOp
from policies import funnel
from policies.catalogue import Catalogue
from policies.exploration import SeededDraws
from policies.funnel import Choice, Decision, Situation

log = structlog.get_logger("nba.decisions")

Clock = Callable[[], float]


def store_config(settings: Settings) -> StoreConfig:
    return StoreConfig(
        profile_ttl_ms=settings.profile_ttl_days * 86_400_000,
        dedupe_window_ms=settings.dedupe_window_hours * 3_600_000,
        stage_rules=StageRules(),
        decision_ttl_ms=settings.decision_ttl_hours * 3_600_000,
        log_max=settings.decision_log_max,
    )


def trigger_ops(catalogue: Catalogue, events: Sequence[Event]) -> list[TriggerOp]:
    """The trigger instances these events start and cancel: known customers' only (a trigger acts
    for someone who can be reached), each due at the event's time plus the trigger's delay."""
    ops: list[TriggerOp] = []
    if not catalogue.triggers:
        return ops
    for event in events:
        if event.customer_id is None:
            continue
        if effects := catalogue.trigger_effects(event.type):
            ref = store_keys.customer(event.customer_id).ref
            for start, trigger_id, delay in effects:
                ops.append(TriggerOp(start, trigger_id, ref, event.time_ms, delay))
    return ops


def _delivered(catalogue: Catalogue, action_id: str) -> bool:
    action = catalogue.actions.get(action_id)
    return action is not None and action.spec.destination is not None


def new_decision_id(now_ms: int) -> str:
    """Time-ordered and unique: ``d-`` + 12 hex digits of milliseconds + 16 random hex digits."""
    try:
        random_hex = _RANDOM_HEX.pop()
    except IndexError:
        random_hex = _draw_random_hex()
    return f"d-{now_ms:012x}{random_hex}"


# The random part of decision ids, drawn from the operating system 4 KiB (512 ids) at a time: os.urandom
# for each was a getrandom system call on every page view. A list's pop and extend are atomic, so no
# two callers take the same digits; a forked child starts empty, so it never repeats its parent's.
_RANDOM_HEX: list[str] = []
_RANDOM_BYTES_PER_DRAW: Final = 4096


def _draw_random_hex() -> str:
    drawn = os.urandom(_RANDOM_BYTES_PER_DRAW).hex()
    _RANDOM_HEX.extend([drawn[i : i + 16] for i in range(0, len(drawn), 16)])
    return _RANDOM_HEX.pop()


os.register_at_fork(after_in_child=_RANDOM_HEX.clear)


def _json(value: Any) -> str:
    """Compact JSON, sets as sorted lists: a decision encodes six values (orjson: an eighth of the time
    of the json module's encoder, the same text)."""
    return orjson.dumps(value, default=sorted, option=orjson.OPT_NON_STR_KEYS).decode()


def _logged(choices: tuple[Choice, ...]) -> str:
    """Served or counterfactual actions as the decision log keeps them: id, channel and probability."""
    return _json(
        [{"action_id": c.action_id, "channel": c.channel, "probability": c.probability} for c in choices]
    )


def _logged_features(values: Mapping[str, Any]) -> dict[str, Any]:
    """What the policy saw, without the zeros and never-happened defaults that most features hold.

    A ``days_since_*`` of 0 is kept: it means "just now", while a missing one reads as never
    (models/vectorize.py), so dropping it would make learning see other numbers than scoring did."""
    # Features are numbers, booleans, strings, sets and dicts (never None): the defaults are the falsy
    # values and NEVER. A decision's are read by the names that may hold anything else (features.py
    # ``touched``); each is tested by truth first, and a falsy one by its (never empty) name's first
    # letter before the method call.
    logged = {}
    for k in touched(values):
        v = values[k]
        if (v != NEVER if v else k[0] == "d" and k.startswith("days_since_")) or k == "stage":
            logged[k] = v
    return logged


def _actions(choices: tuple[Choice, ...]) -> list[dict[str, Any]]:
    return [
        {
            "action_id": c.action_id,
            "channel": c.channel,
            "probability": round(c.probability, 6),
            "score": round(c.priority, 6),
            "payload": dict(c.payload),
        }
        for c in choices
    ]


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
    catalogues: Catalogues
    models: Models = field(default_factory=Models)
    clock: Clock = time.time
    # Decision ids (and so exploration draws, which are seeded by them); the simulator's simulated clock
    # makes them reproducible.
    new_id: Callable[[int], str] = field(default=new_decision_id)
    budgets: Budgets = field(default_factory=Budgets)  # the decisions' deadlines, on one timer

    def _events(self, items: Sequence[tuple[str, EventFields, str | None, str | None]]) -> list[Event]:
        """Events from ``(field path prefix, what the event says, customer_id, anonymous_id)``; an event
        time too far ahead is refused, for the whole request, naming each such field."""
        now_ms = int(self.clock() * 1000)
        latest_ms = now_ms + self.settings.future_tolerance_s * 1000
        events, problems = [], []
        for where, item, customer_id, anonymous_id in items:
            time_ms = now_ms if item.timestamp is None else int(item.timestamp.timestamp() * 1000)
            if time_ms > latest_ms:
                problems.append(
                    {
                        "field": f"{where}timestamp",
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
                    customer_id=customer_id,
                    anonymous_id=anonymous_id,
                    event_id=item.event_id,
                    properties=item.properties,
                )
            )
        if problems:
            summary = "; ".join(f"{p['field']} {p['problem']}" for p in problems[:3])
            raise InvalidInput(f"nothing was applied: {summary}", code="timestamp_in_future", fields=problems)
        return events

    async def ingest(self, body: EventIn | EventBatchIn) -> EventsAccepted:
        if isinstance(body, EventBatchIn):
            items = [(f"events[{i}].", e, e.customer_id, e.anonymous_id) for i, e in enumerate(body.events)]
        else:
            items = [("", body, body.customer_id, body.anonymous_id)]
        events = self._events(items)
        result = await self.store.ingest(events, trigger_ops(self.catalogues.live, events))
        metrics.ingested(result.accepted, result.duplicates)
        return EventsAccepted(accepted=result.accepted, duplicates=result.duplicates)

    async def profile(self, profile_id: str, id_type: IdKind) -> dict[str, Any]:
        profile = await self.store.profile(profile_id, id_type)
        if profile is None:
            raise NotFound(_unknown(profile_id, id_type), code="customer_not_found")
        return ProfileOut.of(profile)

    async def erase(self, profile_id: str, id_type: IdKind) -> None:
        """The profile, its aliases and contact history (store.erase), its pending triggers, and its
        deliveries not yet made."""
        erased = await self.store.erase(profile_id, id_type)
        found = erased.existed
        if erased.customer_id is not None:  # also when reached through a linked anonymous id
            ref = store_keys.customer(erased.customer_id).ref
            found = bool(await self.store.triggers().forget(ref, self.catalogues.live.triggers)) or found
            found = bool(await self.store.outbox().forget(ref)) or found
        if not found:
            raise NotFound(_unknown(profile_id, id_type), code="customer_not_found")

    async def link(self, body: IdentityIn) -> IdentityLinked:
        merged = await self.store.link(body.anonymous_id, body.customer_id)
        return IdentityLinked(anonymous_id=body.anonymous_id, customer_id=body.customer_id, merged=merged)

    async def ready(self) -> None:
        await self.store.ping()

    async def model_report(self) -> dict[str, Any]:
        """Per action of the catalogue: what its model has learned, and from how much."""
        from models.snapshot import maturity

        snapshot = self.models.scorer.snapshot
        now_ms = int(self.clock() * 1000)
        actions = {}
        for action_id in self.catalogues.live.actions:
            m = snapshot.actions.get(action_id)
            observations, positives = (m.observations, m.positives) if m else (0, 0)
            actions[action_id] = {
                "observations": observations,
                "positives": positives,
                "rewards": positives,  # the same count, under the name the learning guide uses
                "reward_sum": round(m.reward_sum, 4) if m else 0.0,
                "maturity": maturity(observations, positives),
                "last_update": iso(m.updated_ms) if m and m.updated_ms else None,
            }
        published = snapshot.published_ms
        return {
            "model_version": snapshot.version,
            "published_at": iso(published) if published else None,
            "age_s": round((now_ms - published) / 1000, 3) if published else None,
            "actions": actions,
        }

    async def decide(
        self, body: DecideIn, *, decision_id: str | None = None, budget_ms: int | None = None
    ) -> dict[str, Any]:
        """Choose what to show; within the decision budget, or the placement's fallback, flagged.

        A trigger firing (app/triggers.py) gives its own ``decision_id`` and budget. Then an action with
        a destination is not recorded as a contact when it is chosen but when it is delivered
        (``record_contact``): a delivery that fails is no contact."""
        started = time.perf_counter()
        catalogue, scorer = self.catalogues.live, self.models.scorer  # one of each for the whole decision
        if body.placement not in catalogue.placements:
            known = ", ".join(sorted(catalogue.placements))
            raise InvalidInput(
                f"unknown placement {body.placement!r}; the catalogue has: {known}",
                code="unknown_placement",
                fields=[{"field": "placement", "problem": f"not in catalogue {catalogue.version}"}],
            )
        profile_keys = (
            store_keys.customer(body.customer_id)
            if body.customer_id is not None
            else store_keys.anonymous(str(body.anonymous_id))
        )
        events = (
            self._events([("event.", body.event, body.customer_id, body.anonymous_id)])
            if body.event is not None
            else []
        )
        now_ms = int(self.clock() * 1000)
        fired = decision_id is not None
        source = "trigger" if fired else "web"
        decision_id = decision_id or self.new_id(now_ms)
        ingested: Ingested | None = None
        decision: Decision | None = None
        try:
            async with self.budgets.within((budget_ms or self.settings.decision_budget_ms) / 1000):
                ops = trigger_ops(catalogue, events)
                read = await self.store.apply_and_read(profile_keys, events, ops)
                ingested = read.ingested
                metrics.ingested(ingested.accepted, ingested.duplicates)
                raw = read.raw
                customer = read.keys.kind is IdKind.CUSTOMER
                rules = self.store.stage_rules
                situation = Situation(
                    customer=read.keys.ref,
                    features=features(raw, now_ms, catalogue.event_types, known=customer, rules=rules),
                    context=body.context,
                    contacts=contacts(raw) if raw.exists else (),
                    now_ms=now_ms,
                    group=raw.profile.get("g"),
                    held_out=held_out(raw.profile),
                )
                decision = funnel.decide(
                    catalogue,
                    body.placement,
                    situation,
                    scorer,
                    SeededDraws(decision_id),
                    limit=body.limit,
                )
            latency_ms = (time.perf_counter() - started) * 1000
            # Recording is not cut short by the budget (only by the store's own timeout): cut short, it
            # could land after the caller was told "fallback", logging as served what nobody saw.
            record = self._record(
                decision_id, read.keys, body, decision, situation, catalogue.version, latency_ms, fired
            )
            await self.store.record_decision(record)
        except (StoreUnavailable, TimeoutError) as exc:
            served = funnel.fallback(catalogue, body.placement, limit=body.limit)
            seconds = time.perf_counter() - started
            first = served[0].action_id if served else "none"
            metrics.decided(body.placement, first, "none", fallback=True, source=source, seconds=seconds)
            # One `decision` event per decision, fallbacks included (a warning, with the reason).
            log.warning(
                "decision",
                decision_id=decision_id,
                customer=profile_keys.ref,  # logged as a pseudonym (app/logging.py)
                placement=body.placement,
                source=source,
                group=None,
                actions=[c.action_id for c in served],
                fallback=True,
                reason="budget" if isinstance(exc, TimeoutError) else "store",
                latency_ms=round(seconds * 1000, 3),
            )
            version, model = catalogue.version, scorer.version
            return self._answer(body, decision_id, None, served, version, model, ingested, fallback=True)
        metrics.decided(
            body.placement,
            decision.chosen[0].action_id if decision.chosen else "none",
            decision.group,
            fallback=False,
            source=source,
            seconds=latency_ms / 1000,
            offered=decision.offered,
        )
        log.info(
            "decision",
            decision_id=decision_id,
            customer=read.keys.ref,  # logged as a pseudonym (app/logging.py)
            placement=body.placement,
            source=source,
            group=decision.group,
            actions=[c.action_id for c in decision.chosen],
            fallback=False,
            latency_ms=round(latency_ms, 3),  # reading and deciding, as in the decision log and metrics
            total_ms=round((time.perf_counter() - started) * 1000, 3),  # and recording
        )
        version, model = catalogue.version, decision.model_version
        return self._answer(
            body, decision_id, decision, decision.chosen, version, model, ingested, fallback=False
        )

    def _record(
        self,
        decision_id: str,
        profile_keys: store_keys.ProfileKeys,
        body: DecideIn,
        decision: Decision,
        situation: Situation,
        catalogue_version: str,
        latency_ms: float,
        fired: bool = False,
    ) -> DecisionRecord:
        now_ms = situation.now_ms
        catalogue = self.catalogues.live
        served = tuple(
            ContactRecord(now_ms, decision_id, c.action_id, c.channel, "served")
            for c in decision.chosen
            if not (fired and _delivered(catalogue, c.action_id))
        )
        summary = {
            "customer": profile_keys.ref,
            "placement": body.placement,
            "group": decision.group,
            "time_ms": str(now_ms),
            "actions": _logged(decision.chosen),
            "counterfactual": _logged(decision.counterfactual),
        }
        if decision.holdout_counterfactual:  # only then: most decisions withhold nothing
            summary["holdout_counterfactual"] = _logged(decision.holdout_counterfactual)
        # The learner reads what the policy saw from the summary when the reward comes in.
        summary["features"] = _json(_logged_features(situation.features))
        summary["context"] = _json(body.context)
        entry = {
            "decision_id": decision_id,
            **summary,
            "eligible": _json(decision.eligible),
            # Every action that reached arbitration: [propensity, score], for evaluation and calibration.
            "scores": _json(
                {
                    v.action_id: [round(v.propensity, 6), round(v.priority or 0.0, 6)]
                    for v in decision.offered
                    if v.propensity is not None
                }
            ),
            "catalogue_version": catalogue_version,
            "model_version": decision.model_version,
            "latency_ms": f"{latency_ms:.3f}",
        }
        return DecisionRecord(
            decision_id,
            profile_keys,
            served,
            decision.assigned_group,
            decision.assigned_holdouts,
            summary,
            entry,
        )

    def _answer(
        self,
        body: DecideIn,
        decision_id: str,
        decision: Decision | None,
        chosen: tuple[Choice, ...],
        catalogue_version: str,
        model_version: str,
        ingested: Ingested | None,
        *,
        fallback: bool,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "decision_id": decision_id,
            "customer_id": body.customer_id,
            "anonymous_id": body.anonymous_id,
            "placement": body.placement,
            "group": decision.group if decision else None,
            "fallback": fallback,
            "actions": _actions(chosen),
            "policy_version": catalogue_version,
            "model_version": model_version,
        }
        if body.event is not None:
            out["event"] = (
                {"accepted": ingested.accepted, "duplicates": ingested.duplicates} if ingested else None
            )
        if body.explain:
            out["explanation"] = (
                [
                    {
                        "action_id": v.action_id,
                        "status": v.status,
                        "reason": v.reason,
                        "probability": v.probability,
                        "propensity": v.propensity,
                        "maturity": v.maturity,
                        "score": v.priority,
                    }
                    for v in decision.verdicts
                ]
                if decision
                else []
            )
        return out

    async def record_delivery(self, message: Message) -> None:
        """A delivered message is a contact, for the contact policy (a failed one is not)."""
        now_ms = int(self.clock() * 1000)
        contact = ContactRecord(now_ms, message.decision_id, message.action_id, message.channel, "served")
        await self.store.record_contact(store_keys.ProfileKeys.parse(message.customer), contact)

    async def outcome(self, item: OutcomeIn) -> bool:
        """Record one outcome; ``False`` for a repeat. Raises NotFound or InvalidInput."""
        summary = await self.store.decision(item.decision_id)
        if summary is None:
            raise NotFound(
                f"no decision {item.decision_id!r}: unknown, or older than "
                f"NBA_DECISION_TTL_HOURS ({self.settings.decision_ttl_hours}h)",
                code="decision_not_found",
            )
        # Only what was served: a control customer never saw the counterfactual, so cannot dismiss it.
        served = {a["action_id"]: a for a in json.loads(summary["actions"])}
        if item.action_id not in served:
            raise InvalidInput(
                f"action {item.action_id!r} was not part of decision {item.decision_id!r} "
                f"(it served: {', '.join(served) or 'nothing'})",
                code="action_not_in_decision",
                fields=[{"field": "action_id", "problem": "not part of this decision"}],
            )
        now_ms = int(self.clock() * 1000)
        time_ms = now_ms if item.timestamp is None else min(int(item.timestamp.timestamp() * 1000), now_ms)
        kind = {"dismiss": "dismiss", "conversion": "conversion"}.get(item.type)
        channel = str(served[item.action_id]["channel"])
        contact = ContactRecord(time_ms, item.decision_id, item.action_id, channel, kind) if kind else None
        entry = {
            "decision_id": item.decision_id,
            "action_id": item.action_id,
            "type": item.type,
            "value": repr(item.value),
            "time_ms": str(time_ms),
            "customer": summary["customer"],
            "placement": summary["placement"],
            "group": summary["group"],
        }
        return await self.store.record_outcome(
            item.decision_id, f"{item.type}:{item.action_id}", contact, entry
        )

    async def outcomes(self, body: OutcomeIn | OutcomeBatchIn) -> OutcomesAccepted:
        if isinstance(body, OutcomeIn):
            new = await self.outcome(body)
            return OutcomesAccepted(accepted=int(new), duplicates=int(not new))
        accepted = duplicates = 0
        errors = []
        for index, item in enumerate(body.outcomes):
            try:
                new = await self.outcome(item)
            except (NotFound, InvalidInput) as exc:
                errors.append(OutcomeError(index=index, error=exc.code, detail=exc.detail))
                continue
            accepted += int(new)
            duplicates += int(not new)
        return OutcomesAccepted(accepted=accepted, duplicates=duplicates, errors=errors)
