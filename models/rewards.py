"""The reward join: what a served action earned, from explicit outcomes and from purchases.

Each placement says what success is (``reward`` in the catalogue) and for how long it counts
(``attribution``):

- ``click``: a ``click`` or ``conversion`` outcome for the action earns 1;
- ``conversion``: a ``conversion`` outcome for the action earns 1, and so does any purchase by the
  customer within the window;
- ``value``: as ``conversion``, earning the outcome's ``value`` or the purchases' revenue.

Attribution rule: a purchase counts for every decision served to that customer whose window it falls
in (after the decision, no later than decision time + attribution), for every action that decision
served, and for the counterfactual actions of a control customer's decision alike, so that measurement
sees both groups the same way; and for a treatment customer's holdout counterfactual actions (those
withheld by their own holdout that would have been served), so that each such action's lift is
measured the same way. Explicit outcomes count for the action they name.

A positive outcome is learned as soon as it arrives; a (decision, action) whose window closes without
one is learned at the close, as a zero unless purchases in its window earned it something. Each is
learned once (``models/learner.py`` says how that survives restarts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SERVED = "s"
COUNTERFACTUAL = "c"  # a control customer's: what treatment would have served
HELD_OUT = "h"  # a treatment customer's: withheld by its own holdout, and would have been served
# How the rewards stream's ``counterfactual`` field names each kind (the uplift report reads it).
REWARD_KIND = {SERVED: "0", COUNTERFACTUAL: "1", HELD_OUT: "holdout"}


@dataclass(frozen=True, slots=True)
class Pending:
    """A served (or counterfactual, or held-out) action awaiting its reward."""

    decision_id: str
    action_id: str
    kind: str  # SERVED, COUNTERFACTUAL or HELD_OUT

    def member(self) -> str:
        return f"{self.decision_id}|{self.action_id}|{self.kind}"

    @classmethod
    def parse(cls, member: str) -> Pending:
        decision_id, action_id, kind = member.rsplit("|", 2)
        return cls(decision_id, action_id, kind)


@dataclass(frozen=True, slots=True)
class Earned:
    value: float
    positive: bool
    source: str  # "outcome", "purchase" or "none"


def from_outcome(reward: str, outcome_type: str, value: float) -> Earned | None:
    """What an explicit outcome earns at once under ``reward``, or ``None`` if it earns nothing."""
    if reward == "click" and outcome_type in ("click", "conversion"):
        return Earned(1.0, True, "outcome")
    if reward == "conversion" and outcome_type == "conversion":
        return Earned(1.0, True, "outcome")
    if reward == "value" and outcome_type == "conversion":
        return Earned(value, True, "outcome")
    return None


def at_close(reward: str, purchases: Sequence[float]) -> Earned:
    """What a window that closed without a positive outcome earned: ``purchases`` are the revenues
    of the customer's purchases within it."""
    if reward == "click" or not purchases:
        return Earned(0.0, False, "none")
    if reward == "conversion":
        return Earned(1.0, True, "purchase")
    return Earned(round(sum(purchases), 2), True, "purchase")
