"""What a propensity model sees: the profile's features, the request context, the placement and the
hour, as a sparse vector of numbers. The same function serves scoring (full features) and learning
(the features a decision logged, which leave out zeros, never-happened and empty values), so a
missing feature means its default: 0, or never for ``days_since_*``.

- counts and amounts: ``log1p``, so one more page view matters less the more there were;
- ``days_since_*``: a recency, 1 for now falling to 0 at a year (never: 0, so that a missing value
  and a never-happened one are the same zero);
- booleans: 0 or 1; ``stage``: one-hot;
- context: numbers as they are (clipped to ±1000), anything else one-hot (``ctx.device=mobile``);
- placement: one-hot; hour of day (UTC, of the decision): a point on the circle (sin, cos).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_DAY_MS = 86_400_000
_YEAR_DAYS = 365.0


def vector(
    features: Mapping[str, Any], context: Mapping[str, Any], placement: str, now_ms: int
) -> dict[str, float]:
    """The sparse vector (zeros left out) a model scores."""
    x: dict[str, float] = {f"placement={placement}": 1.0}
    hour = (now_ms % _DAY_MS) / 3_600_000
    x["hour.sin"] = math.sin(2 * math.pi * hour / 24)
    x["hour.cos"] = math.cos(2 * math.pi * hour / 24)
    for name, value in features.items():
        if name.startswith("days_since_"):
            if isinstance(value, int | float) and value < _YEAR_DAYS:
                x[f"recency_{name.removeprefix('days_since_')}"] = 1.0 - max(0.0, float(value)) / _YEAR_DAYS
            continue
        if isinstance(value, bool):
            if value:
                x[name] = 1.0
        elif isinstance(value, int | float):
            if value > 0:
                x[name] = math.log1p(value)
        elif name == "stage" and isinstance(value, str):
            x[f"stage={value}"] = 1.0
    for key, value in context.items():
        if isinstance(value, bool | str):
            x[f"ctx.{key}={str(value).lower() if isinstance(value, bool) else value}"] = 1.0
        elif isinstance(value, int | float) and math.isfinite(value):
            x[f"ctx.{key}"] = max(-1000.0, min(1000.0, float(value)))
    return x
