"""The decision funnel: pure, synchronous, seeded. Given what the store read and what the models say,
it returns what to show and why, for web calls, triggers and simulations alike.

For one placement, every action of the catalogue passes, in order:

1. applicability: the action serves the placement (and so its channel) -> else ``ineligible``;
2. eligibility: its rule holds on the profile and context -> else ``ineligible``;
3. consent: the channel's consent is granted, where the action requires it -> else ``no_consent``;
4. contact policy: the action's, the channel's and the overall limits over what was served, the
   cooldown after a dismiss, the suppression after repeated dismissals, and never again after a
   conversion -> else ``capped`` or ``suppressed``;
5. holdouts: the global control group keeps only exempt actions; an action's own holdout withholds
   it from its share -> else ``holdout``;
6. arbitration: priority = propensity x context weight x value x levers;
7. exploration and top-k: exact probabilities over the eligible actions, then a seeded draw of up to
   ``limit`` -> ``chosen`` or ``not_chosen``.

A control customer's decision is also drawn as if they were in treatment: that counterfactual is
logged (never returned), so that uplift is measured against what control would have got. Likewise, for
a treatment customer whom an action's own holdout withholds it from, the draw is made again as if that
action alone were not withheld: the holdout counterfactual, so that the action's lift is measured
against the treatment customers it was withheld from (docs/uplift.md).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from policies import holdout
from policies.catalogue import Catalogue, CompiledAction, Exploration, Limit
from policies.exploration import Draws, SeededDraws, draw, probabilities
from policies.rules import RuleEvaluationError, RuleScope

Status = Literal["chosen", "not_chosen", "ineligible", "no_consent", "capped", "suppressed", "holdout"]
ContactKind = Literal["served", "dismiss", "conversion"]


class Scorer(Protocol):
    """Propensity of a customer to respond to an action, from ``models/``."""

    @property
    def version(self) -> str: ...

    def for_situation(
        self, features: Mapping[str, Any], context: Mapping[str, Any], placement: str, now_ms: int
    ) -> Callable[[CompiledAction], float]:
        """For one customer, placement and moment: the probability that they respond to each action."""
        ...

    def maturity(self, action_id: str) -> str:
        """``cold``, ``learning`` or ``mature``: how much evidence the propensity rests on."""
        ...


class Contact(Protocol):
    """Something that happened between the customer and an action: served, dismissed, converted."""

    @property
    def time_ms(self) -> int: ...

    @property
    def action_id(self) -> str: ...

    @property
    def channel(self) -> str: ...

    @property
    def kind(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Situation:
    """What the store knows, as the funnel needs it."""

    customer: str  # the canonical id that holdouts hash
    features: Mapping[str, Any]
    context: Mapping[str, Any]
    contacts: Sequence[Contact]
    now_ms: int
    group: str | None = None  # persisted global group, None at first sight
    held_out: Mapping[str, bool] = field(default_factory=dict)  # persisted per-action holdouts


@dataclass(frozen=True, slots=True)
class Verdict:
    action_id: str
    status: Status
    reason: str
    probability: float | None = None
    propensity: float | None = None
    priority: float | None = None
    maturity: str | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    action_id: str
    channel: str
    probability: float
    priority: float
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    group: str
    chosen: tuple[Choice, ...]
    counterfactual: tuple[Choice, ...]  # control only: what treatment would have served
    # Treatment only: each action withheld by its own holdout that would have been drawn, had it alone not
    # been withheld (one draw per withheld action, so that any other holdouts stay as they are).
    holdout_counterfactual: tuple[Choice, ...]
    eligible: Mapping[str, float]  # action -> probability at the first draw, over the served draw
    offered: tuple[Verdict, ...]  # the verdicts of the placement's actions, in the catalogue's order
    assigned_group: str | None  # a group assigned at this sight, to persist
    assigned_holdouts: Mapping[str, bool]  # per-action holdouts assigned at this sight, to persist
    model_version: str
    layout: _Layout  # where the placement's actions stand among the catalogue's, and the others' verdicts

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        """Every action's verdict, in the catalogue's order: the placement's, and "not offered" for the
        others. Made when asked (an explanation): the metrics and the record read ``offered``."""
        out = list(self.layout.others)
        for index, verdict in zip(self.layout.offered_at, self.offered, strict=True):
            out[index] = verdict
        return cast(tuple[Verdict, ...], tuple(out))  # each None's place is one of offered_at


def _count(
    contacts: Sequence[Contact],
    now_ms: int,
    per_ms: int,
    kind: ContactKind,
    action_id: str | None = None,
    channel: str | None = None,
) -> int:
    """The contacts of ``kind`` within ``per_ms`` before ``now_ms``, of ``action_id`` or ``channel`` when
    given."""
    since, count = now_ms - per_ms, 0
    for c in contacts:
        if (
            c.kind == kind
            and c.time_ms > since
            and (action_id is None or c.action_id == action_id)
            and (channel is None or c.channel == channel)
        ):
            count += 1
    return count


def _first_full(
    limits: Sequence[Limit],
    contacts: Sequence[Contact],
    now_ms: int,
    action_id: str | None = None,
    channel: str | None = None,
) -> Limit | None:
    for limit in limits:
        if _count(contacts, now_ms, limit.per, "served", action_id, channel) >= limit.max:
            return limit
    return None


def _human(ms: int) -> str:
    """``86400000`` -> ``24h`` (hours up to two days, as marketers write them), ``604800000`` -> ``7d``."""
    for unit, size, at_least in (
        ("d", 86_400_000, 2 * 86_400_000),
        ("h", 3_600_000, 3_600_000),
        ("m", 60_000, 60_000),
    ):
        if ms >= at_least and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms // 1000}s"


def _contact_policy(
    action: CompiledAction, catalogue: Catalogue, situation: Situation
) -> tuple[Status, str] | None:
    spec, contacts, now = action.spec, situation.contacts, situation.now_ms
    if not contacts:  # nothing served, dismissed or converted: no policy can hold the action back
        return None
    if not spec.reoffer_after_conversion and any(
        c.kind == "conversion" and c.action_id == spec.id for c in contacts
    ):
        return "suppressed", "already converted"
    if spec.cooldown_after_dismiss is not None and _count(
        contacts, now, spec.cooldown_after_dismiss, "dismiss", action_id=spec.id
    ):
        return "suppressed", f"dismissed within {_human(spec.cooldown_after_dismiss)}"
    if spec.suppress is not None and (
        _count(contacts, now, spec.suppress.per, "dismiss", action_id=spec.id) >= spec.suppress.dismissals
    ):
        return "suppressed", f"dismissed {spec.suppress.dismissals} times within {_human(spec.suppress.per)}"
    policy = catalogue.contact_policy
    full = _first_full(spec.limits, contacts, now, action_id=spec.id)
    scope = "action"
    if full is None:
        full = _first_full(policy.channels.get(spec.channel, ()), contacts, now, channel=spec.channel)
        scope = f"{spec.channel} channel"
    if full is None:
        full = _first_full(policy.overall, contacts, now)
        scope = "overall"
    if full is not None:
        return "capped", f"{scope} limit of {full.max} per {_human(full.per)} reached"
    return None


def priority(action: CompiledAction, propensity: float, context: Mapping[str, Any]) -> float:
    """Arbitration's score: propensity x context weight x value x levers."""
    return propensity * context_weight(action, context) * action.spec.value * action.spec.levers


def context_weight(action: CompiledAction, context: Mapping[str, Any]) -> float:
    """The product of the action's ``context_weights`` matching the request's context (1 if none)."""
    weight = 1.0
    for key, weights in action.spec.context_weights.items():
        value = context.get(key)
        if value is not None:
            weight *= weights.get(str(value).lower() if isinstance(value, bool) else str(value), 1.0)
    return weight


@dataclass(slots=True)
class _Candidate:
    action: CompiledAction
    propensity: float
    priority: float


def _choices(
    candidates: Sequence[_Candidate], exploration: Exploration, k: int, rng: Draws
) -> tuple[tuple[Choice, ...], dict[str, float]]:
    priorities = [c.priority for c in candidates]
    drawn = draw(priorities, exploration, k, rng)
    chosen = tuple(
        Choice(
            candidates[i].action.id,
            candidates[i].action.spec.channel,
            probability,
            candidates[i].priority,
            candidates[i].action.spec.payload,
        )
        for i, probability in drawn
    )
    first = probabilities(priorities, exploration)
    return chosen, {c.action.id: p for c, p in zip(candidates, first, strict=True)}


def _holdout_counterfactual(
    served: Sequence[_Candidate],
    withheld: Sequence[tuple[int, CompiledAction]],
    propensity_of: Callable[[CompiledAction], float],
    context: Mapping[str, Any],
    exploration: Exploration,
    k: int,
    rng: Draws,
) -> tuple[Choice, ...]:
    """For each action withheld at its place among ``served`` (the catalogue's order): the action, if the
    draw over ``served`` with it put back would have chosen it. Each draw from its own generator, so that
    the served draw is the same with or without them."""
    out: list[Choice] = []
    for at, action in withheld:
        propensity = propensity_of(action)
        candidate = _Candidate(action, propensity, priority(action, propensity, context))
        candidates = [*served[:at], candidate, *served[at:]]
        drawn, _ = _choices(candidates, exploration, k, SeededDraws(rng.random()))
        out.extend(c for c in drawn if c.action_id == action.id)
    return tuple(out)


def decide(
    catalogue: Catalogue,
    placement: str,
    situation: Situation,
    scorer: Scorer,
    rng: Draws,
    *,
    limit: int | None = None,
) -> Decision:
    """Run the funnel for one placement. ``placement`` must exist in the catalogue."""
    spec = catalogue.placements[placement]
    k = spec.limit if limit is None else limit
    seed, share = catalogue.holdout.seed, catalogue.holdout.share
    group = situation.group or holdout.group(seed, share, situation.customer)
    assigned_group = None if situation.group else group
    assigned_holdouts: dict[str, bool] = {}
    verdicts: dict[str, Verdict] = {}
    treatment: list[_Candidate] = []  # what a treatment customer would be offered
    served: list[_Candidate] = []  # what this customer may be offered
    # Treatment: the actions withheld by their own holdouts, and where. A tuple: most decisions withhold
    # nothing, and the empty one costs nothing.
    withheld_at: tuple[tuple[int, CompiledAction], ...] = ()
    applicable = catalogue.by_placement.get(placement, ())
    rules = RuleScope(situation.features, situation.context)
    propensity_of = scorer.for_situation(situation.features, situation.context, placement, situation.now_ms)
    for action in applicable:
        a = action.spec
        try:
            holds = rules.holds(action.rule)
        except RuleEvaluationError as exc:
            verdicts[a.id] = Verdict(a.id, "ineligible", f"rule could not be evaluated: {exc}")
            continue
        if not holds:
            verdicts[a.id] = _fixed_verdict(a.id, "ineligible", "rule does not hold")
            continue
        if a.consent is not None and not situation.features.get("consent", {}).get(a.consent, False):
            verdicts[a.id] = _fixed_verdict(a.id, "no_consent", f"no {a.consent} consent")
            continue
        blocked = _contact_policy(action, catalogue, situation)
        if blocked is not None:
            verdicts[a.id] = Verdict(a.id, blocked[0], blocked[1])
            continue
        if a.id in situation.held_out:
            withheld = situation.held_out[a.id]
        else:
            withheld = holdout.held_out(seed, a.holdout, a.id, situation.customer)
            if a.holdout > 0:
                assigned_holdouts[a.id] = withheld
        if withheld:
            verdicts[a.id] = Verdict(a.id, "holdout", f"in this action's {a.holdout:.0%} holdout")
            if group == holdout.TREATMENT:  # measured within treatment only (docs/uplift.md)
                withheld_at += ((len(served), action),)
            continue
        propensity = propensity_of(action)
        candidate = _Candidate(action, propensity, priority(action, propensity, situation.context))
        treatment.append(candidate)
        if group == holdout.CONTROL and not a.exempt:
            verdicts[a.id] = Verdict(
                a.id,
                "holdout",
                "customer is in the control group",
                propensity=propensity,
                priority=candidate.priority,
                maturity=scorer.maturity(a.id),
            )
        else:
            served.append(candidate)
    exploration = spec.exploration or catalogue.exploration
    chosen, eligible = _choices(served, exploration, k, rng)
    counterfactual: tuple[Choice, ...] = ()
    if group == holdout.CONTROL:
        # Drawn from its own generator, so that the served draw is the same with or without it.
        counterfactual, _ = _choices(treatment, exploration, k, SeededDraws(rng.random()))
    held_out: tuple[Choice, ...] = ()
    if withheld_at:
        context = situation.context
        held_out = _holdout_counterfactual(served, withheld_at, propensity_of, context, exploration, k, rng)
    chosen_ids = {c.action_id: c for c in chosen}
    for candidate in served:
        action_id = candidate.action.id
        choice = chosen_ids.get(action_id)
        verdicts[action_id] = Verdict(
            action_id,
            "chosen" if choice else "not_chosen",
            "drawn" if choice else "not drawn",
            probability=choice.probability if choice else eligible[action_id],
            propensity=candidate.propensity,
            priority=candidate.priority,
            maturity=scorer.maturity(action_id),
        )
    return Decision(
        group=group,
        chosen=chosen,
        counterfactual=counterfactual,
        holdout_counterfactual=held_out,
        eligible=eligible,
        offered=tuple(verdicts[a.spec.id] for a in applicable),
        assigned_group=assigned_group,
        assigned_holdouts=assigned_holdouts,
        model_version=scorer.version,
        layout=_layout(catalogue, placement),
    )


@functools.lru_cache(maxsize=4096)
def _fixed_verdict(action_id: str, status: Status, reason: str) -> Verdict:
    """A verdict with nothing of the decision in it, made once: most of a decision's verdicts are these
    (a frozen dataclass sets each field through ``object.__setattr__``)."""
    return Verdict(action_id, status, reason)


@dataclass(frozen=True, slots=True)
class _Layout:
    others: tuple[Verdict | None, ...]  # per action of the catalogue: "not offered", or None if offered
    offered_at: tuple[int, ...]  # the places of the placement's actions among the catalogue's


def _layout(catalogue: Catalogue, placement: str) -> _Layout:
    """The same for every decision on ``placement``, so made once per catalogue (the live one; a reload
    replaces it)."""
    if _LAYOUTS.catalogue is not catalogue:
        _LAYOUTS.catalogue, _LAYOUTS.layouts = catalogue, {}
    found = _LAYOUTS.layouts.get(placement)
    if found is None:
        actions = list(catalogue.actions.values())
        found = _LAYOUTS.layouts[placement] = _Layout(
            tuple(
                None
                if placement in a.spec.placements
                else Verdict(a.id, "ineligible", f"not offered on {placement}")
                for a in actions
            ),
            tuple(i for i, a in enumerate(actions) if placement in a.spec.placements),
        )
    return found


class _Layouts(threading.local):
    catalogue: Catalogue | None = None
    layouts: dict[str, _Layout]


_LAYOUTS = _Layouts()


def fallback(catalogue: Catalogue, placement: str, *, limit: int | None = None) -> tuple[Choice, ...]:
    """The placement's fallback actions, for when the profile or the models cannot be had in time."""
    spec = catalogue.placements[placement]
    k = spec.limit if limit is None else limit
    return tuple(
        Choice(a, catalogue.actions[a].spec.channel, 1.0, 0.0, catalogue.actions[a].spec.payload)
        for a in spec.fallback[:k]
    )
