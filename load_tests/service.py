"""What the benchmarks share: a running service (models/local_service.py) and percentiles."""

from __future__ import annotations

from models.local_service import Service, ServiceNotReady, running_service, stop

__all__ = ["Service", "ServiceNotReady", "percentile", "running_service", "stop"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
