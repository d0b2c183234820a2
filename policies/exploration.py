"""Turning priorities into exact choice probabilities, and drawing from them.

Every eligible action gets a probability, they sum to one, and the one drawn is logged with its
probability, so off-policy estimates over the decision log are valid.

Top-k draws are sequential without replacement: the first action is drawn from the probabilities over
all eligible actions, the next from the probabilities recomputed over those left, and so on; each
chosen action carries the probability it had at its own draw.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from policies.catalogue import Exploration


def probabilities(priorities: Sequence[float], spec: Exploration) -> list[float]:
    """The probability of choosing each action, given its priority."""
    n = len(priorities)
    if n == 0:
        return []
    if spec.policy == "epsilon_greedy":
        best = max(priorities)
        winners = [i for i, p in enumerate(priorities) if p == best]
        out = [spec.epsilon / n] * n
        for i in winners:
            out[i] += (1.0 - spec.epsilon) / len(winners)
        return out
    top = max(priorities)
    scale = top if top > 0 else 1.0
    weights = [math.exp((p / scale - 1.0) / spec.temperature) for p in priorities]
    total = sum(weights)
    floor = min(spec.floor, 1.0 / n)
    return [floor + (1.0 - n * floor) * w / total for w in weights]


def draw(
    priorities: Sequence[float], spec: Exploration, k: int, rng: random.Random
) -> list[tuple[int, float]]:
    """Draw up to ``k`` distinct indices; each with the probability it had at its draw."""
    left = list(range(len(priorities)))
    chosen: list[tuple[int, float]] = []
    while left and len(chosen) < k:
        probs = probabilities([priorities[i] for i in left], spec)
        at = rng.random()
        pick = max(j for j, p in enumerate(probs) if p > 0)  # where rounding leaves ``at`` past the sum
        cumulative = 0.0
        for j, p in enumerate(probs):
            cumulative += p
            if at < cumulative and p > 0:
                pick = j
                break
        chosen.append((left[pick], probs[pick]))
        del left[pick]
    return chosen
