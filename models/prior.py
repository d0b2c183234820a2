"""The neutral scorer, until the learner publishes models: every action's catalogue ``prior``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.catalogue import CompiledAction


@dataclass(frozen=True, slots=True)
class PriorScorer:
    """Implements :class:`policies.funnel.Scorer` with the action's prior propensity."""

    version: str = "prior"

    def propensity(
        self, action: CompiledAction, features: Mapping[str, Any], context: Mapping[str, Any]
    ) -> float:
        return action.spec.prior
