"""Durations as marketers write them: ``90s``, ``30m``, ``24h``, ``7d``, ``2w``."""

from __future__ import annotations

import re

_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_duration(value: object) -> int:
    """Milliseconds from ``"30m"`` (or a whole number of seconds). Raises ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number with a unit: 30s, 30m, 24h, 7d or 2w")
    if isinstance(value, int):
        return value * 1_000
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return int(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration: write a number with a unit, e.g. 30s, 30m, 24h, 7d, 2w")
