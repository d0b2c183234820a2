"""Holdout groups: a seeded hash of the canonical customer id, the same on every channel and replica.

The draw is ``sha256(seed, salt, id)`` read as a number in [0, 1): below ``share`` is control. The
caller persists the answer at first sight (the profile keeps it), so a later change of ``share`` moves
nobody already assigned; only new customers see the new share.
"""

from __future__ import annotations

import hashlib

CONTROL = "control"
TREATMENT = "treatment"


def bucket(seed: str, salt: str, customer: str) -> float:
    """A uniform number in [0, 1) fixed by ``(seed, salt, customer)``."""
    digest = hashlib.sha256(f"{seed}\x1f{salt}\x1f{customer}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group(seed: str, share: float, customer: str) -> str:
    """The global group for a customer seen for the first time."""
    return CONTROL if bucket(seed, "global", customer) < share else TREATMENT


def held_out(seed: str, share: float, action_id: str, customer: str) -> bool:
    """Whether an action's own holdout withholds it from this customer (first sight)."""
    return share > 0 and bucket(seed, f"action:{action_id}", customer) < share
