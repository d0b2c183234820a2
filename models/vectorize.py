"""What a propensity model sees: the profile's features, the request context, the placement and the
hour, as a sparse vector of numbers. The same function serves scoring (full features) and learning
(the features a decision logged, which leave out zeros, never-happened and empty values), so a
missing feature means its default: 0, or never for ``days_since_*``.

- counts and amounts: ``log1p``, so one more page view matters less the more there were;
- ``days_since_*``: a recency, 1 for now falling to 0 at a year (never: 0, so that a missing value
  and a never-happened one are the same zero);
- booleans: 0 or 1; ``stage``: one-hot;
- context: numbers as they are (clipped to ±1000), anything else one-hot (``ctx.device=mobile``), and
  the categories in pairs (``ctx.device=mobile&segment=deal``), for the first :data:`CROSSED` keys by
  name: a linear model cannot otherwise tell that an action works for mobile deal seekers but for
  neither mobile users nor deal seekers as a whole (Vowpal Wabbit's ``-q``, for the same reason);
- placement: one-hot; hour of day (UTC, of the decision): a point on the circle (sin, cos).

The models learn on the vector *centred*: each feature less its mean over recent decisions
(:class:`Centre`, kept by the learner and published with the snapshot). Without centring, every feature
that is much the same on every decision (a placement, the hour within a short run, the recency of
the last visit, a page-view counter) acts as one more intercept, and AdaGrad, which gives each feature a
step of its own, moves the baseline several times too fast: the greedy choice then swings from one
action to another instead of settling. docs/learning.md shows what it bought in the simulator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from feature_store.features import touched

_DAY_MS = 86_400_000
_YEAR_DAYS = 365.0
CROSSED: Final = 6  # categorical context keys (the first, by name) whose values are crossed in pairs
CENTRE_WINDOW: Final = 10_000  # decisions: the means follow the traffic over about this many
FADED: Final = 1e-6  # a mean this close to 0 is dropped


def vector(
    features: Mapping[str, Any], context: Mapping[str, Any], placement: str, now_ms: int
) -> dict[str, float]:
    """The sparse vector (zeros left out) a model scores."""
    x: dict[str, float] = {f"placement={placement}": 1.0}
    hour = (now_ms % _DAY_MS) / 3_600_000
    x["hour.sin"] = math.sin(2 * math.pi * hour / 24)
    x["hour.cos"] = math.cos(2 * math.pi * hour / 24)
    # Over a hundred features a decision, most of them 0 or never: a decision's are read by the names
    # that may hold anything else (features.py ``touched``), the recencies found by their first letter
    # before the method call, and a falsy value (which adds nothing but a recency) passed over.
    for name in touched(features):
        value = features[name]
        if name[0] == "d" and name.startswith("days_since_"):
            if isinstance(value, int | float) and value < _YEAR_DAYS:
                x[f"recency_{name.removeprefix('days_since_')}"] = 1.0 - max(0.0, float(value)) / _YEAR_DAYS
            continue
        if not value:
            continue
        if isinstance(value, bool):
            if value:
                x[name] = 1.0
        elif isinstance(value, int | float):
            if value > 0:
                x[name] = math.log1p(value)
        elif name == "stage" and isinstance(value, str):
            x[f"stage={value}"] = 1.0
    categories = []
    for key, value in sorted(context.items()):
        if isinstance(value, bool | str):
            category = f"{key}={str(value).lower() if isinstance(value, bool) else value}"
            x[f"ctx.{category}"] = 1.0
            categories.append(category)
        elif isinstance(value, int | float) and math.isfinite(value):
            x[f"ctx.{key}"] = max(-1000.0, min(1000.0, float(value)))
    crossed = categories[:CROSSED]
    for i, first in enumerate(crossed):
        for second in crossed[i + 1 :]:
            x[f"ctx.{first}&{second}"] = 1.0
    return x


def is_ours(name: str) -> bool:
    """Whether a feature is one the service makes (the profile, the placement, the hour), rather than
    one the caller sends in ``context``."""
    return not name.startswith("ctx.")


@dataclass(slots=True)
class Centre:
    """What the models learn on: each feature less its mean, and the features the service makes
    scaled together so that, over the traffic, they move a prediction about as much as one context
    feature does.

    Means and variances are over the decisions seen: exact for the first :data:`CENTRE_WINDOW`, then
    exponentially weighted over about that many, so that they follow counters that grow and traffic
    that changes. A feature missing from a decision counts as its 0.

    Why the scale: AdaGrad gives every feature a step of its own, the same whatever its size, so a
    prediction moves by the sum over the features present. Dozens of profile features (five windows and
    a total for each event type, recencies, amounts) would then outweigh the one context feature that
    tells two segments apart. Their scale is ``1 / sqrt(total variance)``, never more than 1.
    """

    means: dict[str, float] = field(default_factory=dict)
    variances: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def update(self, x: Mapping[str, float]) -> None:
        self.count += 1
        rate = 1.0 / min(self.count, CENTRE_WINDOW)
        means, variances = {}, {}
        for name in self.means.keys() | x.keys():
            mean, variance = self.means.get(name, 0.0), self.variances.get(name, 0.0)
            delta = x.get(name, 0.0) - mean
            mean += delta * rate
            variance += (delta * (x.get(name, 0.0) - mean) - variance) * rate
            # A feature not seen for long (a context value of the past) fades out, rather than every
            # one ever seen staying in every snapshot.
            if name in x or abs(mean) >= FADED or variance >= FADED:
                means[name], variances[name] = mean, variance
        self.means, self.variances = means, variances

    @property
    def scale(self) -> float:
        """What the features the service makes are multiplied by, after centring."""
        total = sum(v for name, v in self.variances.items() if is_ours(name))
        return 1.0 / math.sqrt(max(total, 1.0))

    def centred(self, x: Mapping[str, float]) -> dict[str, float]:
        """``x`` as a model learns it, over every feature either has."""
        scale = self.scale
        out = {}
        for name in x.keys() | self.means.keys():
            value = x.get(name, 0.0) - self.means.get(name, 0.0)
            out[name] = value * scale if is_ours(name) else value
        return out


def for_raw(
    intercept: float, weights: Mapping[str, float], means: Mapping[str, float], scale: float
) -> tuple[float, dict[str, float]]:
    """A model learned on :meth:`Centre.centred` vectors as one that scores raw ones, so that scoring
    stays a dot product over the features present: ``b + sum(w_k * s_k * (x_k - m_k))`` is
    ``(b - sum(w_k * s_k * m_k)) + sum(w_k * s_k * x_k)``. Its intercept and weights."""
    raw = {name: w * scale if is_ours(name) else w for name, w in weights.items()}
    return intercept - sum(w * means.get(name, 0.0) for name, w in raw.items()), raw
