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
from typing import Protocol

from policies.catalogue import Exploration


class Draws(Protocol):
    """Where draws come from: ``random.Random`` or :class:`SeededDraws`."""

    def random(self) -> float: ...


class SeededDraws:
    """The draws of ``random.Random(seed)``, the generator seeded at the first draw whose value is read:
    seeding one costs about 4 µs (its state of 624 words), and most decisions draw nothing (no action is
    eligible) or draw among one (:meth:`skip`)."""

    __slots__ = ("_generator", "_seed", "_skipped")

    def __init__(self, seed: int | float | str | bytes) -> None:
        self._seed = seed
        self._generator: random.Random | None = None
        self._skipped = 0

    def random(self) -> float:
        if self._generator is None:
            self._generator = random.Random(self._seed)
            for _ in range(self._skipped):
                self._generator.random()
        return self._generator.random()

    def skip(self) -> None:
        """A draw whose value nobody reads: taken when a later draw seeds the generator, so that every
        draw after it is the one it would have been."""
        if self._generator is None:
            self._skipped += 1
        else:
            self._generator.random()


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


def draw(priorities: Sequence[float], spec: Exploration, k: int, rng: Draws) -> list[tuple[int, float]]:
    """Draw up to ``k`` distinct indices; each with the probability it had at its draw."""
    left = list(range(len(priorities)))
    chosen: list[tuple[int, float]] = []
    while left and len(chosen) < k:
        probs = probabilities([priorities[i] for i in left], spec)
        if len(left) == 1:  # no choice: the draw is taken, for the draws after it, but not read
            chosen.append((left[0], probs[0]))
            if isinstance(rng, SeededDraws):
                rng.skip()
            else:
                rng.random()
            break
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
