"""The live dashboard's data: one sample of the service's cumulative metrics every 10 s, kept in Redis.

Every worker runs :meth:`Sampler.run`. Just after each 10-s boundary, each one tries to take that slot
(``SET NX``, keys.py); the one that gets it collects the deployment's cumulative counters and histograms
(every worker's, through ``PROMETHEUS_MULTIPROC_DIR``; or this process's alone), reads the backlogs
from Redis, and appends one compact JSON sample to a capped list. So a page opened now shows the last
15 minutes at once, whichever worker or replica answers, and computes rates and quantiles from the
differences between samples. docs/metrics.md describes the sample.

Counters start again from zero when the service restarts (``nba serve`` clears its metrics folder): a
counter that went down between two samples was reset, and the later value is the increase.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import structlog
from prometheus_client.metrics_core import Metric

from app import metrics
from feature_store import StoreUnavailable
from models.stopping import pause

if TYPE_CHECKING:
    from app.services import Services

log = structlog.get_logger("nba.dashboard")

INTERVAL_S: Final = 10
WINDOW_S: Final = 15 * 60  # what the endpoint returns
KEEP: Final = 120  # samples kept in Redis: 20 minutes, more than the window
SLOT_TTL_MS: Final = 60_000  # a slot's claim outlives any disagreement between workers' clocks
WAKE_AFTER_S: Final = 0.05  # past the boundary, so that every worker agrees on the slot


def instance() -> str:
    """Which counters a sample holds: this host and its metrics folder (one per ``nba serve`` run, shared
    by its workers), or this process when it keeps its own."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") if metrics.MULTIPROCESS else None
    return f"{socket.gethostname()}:{os.path.basename(folder.rstrip('/')) if folder else os.getpid()}"


def _add(into: dict[str, float], key: str, value: float) -> None:
    into[key] = into.get(key, 0) + value


def summarise(families: Iterable[Metric]) -> dict[str, Any]:
    """The cumulative values a dashboard needs, from the collected metric families."""
    decisions: dict[str, Any] = {"total": 0, "fallback": 0, "by_action": {}, "by_group": {}, "by_source": {}}
    le = [float(b) for b in metrics.BUCKETS]
    buckets = [0.0] * len(le)
    duration: dict[str, Any] = {"le": le, "counts": buckets, "count": 0, "sum": 0.0}
    dropouts: dict[str, float] = {}
    deliveries: dict[str, float] = {"delivered": 0, "retry": 0, "dead": 0}
    events: dict[str, float] = {"accepted": 0, "duplicate": 0}
    triggers_fired: dict[str, float] = {}
    store_errors = 0.0
    positions = {b: i for i, b in enumerate(le)}
    for family in families:
        name = family.name
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            if name == "nba_decisions":
                decisions["total"] += value
                if labels.get("fallback") == "true":
                    decisions["fallback"] += value
                _add(decisions["by_action"], labels.get("action", "none"), value)
                _add(decisions["by_group"], labels.get("group", "none"), value)
                _add(decisions["by_source"], labels.get("source", "web"), value)
            elif name == "nba_decision_duration_seconds":
                if sample.name.endswith("_bucket"):
                    bound = float(labels["le"])
                    if bound in positions:
                        buckets[positions[bound]] += value
                elif sample.name.endswith("_count"):
                    duration["count"] += value
                elif sample.name.endswith("_sum"):
                    duration["sum"] += value
            elif name == "nba_funnel_dropouts":
                _add(dropouts, labels.get("reason", "other"), value)
            elif name == "nba_webhook_deliveries":
                _add(deliveries, labels.get("result", "other"), value)
            elif name == "nba_events":
                _add(events, labels.get("result", "other"), value)
            elif name == "nba_triggers_fired":
                _add(triggers_fired, labels.get("outcome", "other"), value)
            elif name == "nba_store_errors":
                store_errors += value
    duration["sum"] = round(duration["sum"], 6)
    return {
        "decisions": _ints(decisions),
        "decision_duration": _ints(duration),
        "dropouts": _ints(dropouts),
        "events": _ints(events),
        "deliveries": _ints(deliveries),
        "triggers_fired": _ints(triggers_fired),
        "store_errors": int(store_errors),
    }


def _ints(value: Any) -> Any:
    """Counts as integers (they are, but arrive as floats), for a compact sample."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, float) and value.is_integer() and not math.isinf(value):
        return int(value)
    return value


class Sampler:
    """One per worker. ``tick()`` samples the current slot unless another worker did (tests call it after
    moving the clock); ``run(stop)`` ticks just after every 10-s boundary until ``stop`` is set."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.instance = instance()
        self._store_down = False

    async def sample(self, now: float) -> dict[str, Any]:
        services = self.services
        found = await metrics.backlogs(services)
        snapshot = services.models.scorer.snapshot
        age = round(now - snapshot.published_ms / 1000, 3) if snapshot.published_ms else None
        sample: dict[str, Any] = {"t": round(now, 3), "instance": self.instance}
        sample.update(summarise(metrics.cumulative()))
        # Per action, [observations, positives]: the dashboard's learning curves, 15 minutes back.
        learned = {a: [m.observations, m.positives] for a, m in snapshot.actions.items()}
        sample["model"] = {"version": snapshot.version, "age_s": age, "actions": learned}
        sample["triggers"] = {"pending": found.triggers_pending, "due": found.triggers_due} if found else None
        sample["dead_letters"] = found.dead_letters if found else None
        sample["outbox_due"] = found.outbox_due if found else None
        sample["learner_lag"] = dict(found.learner_lag) if found else None
        sample["pending_rewards"] = found.pending_rewards if found else None
        return sample

    async def tick(self) -> bool:
        """Write this slot's sample if no other worker has; whether this one wrote it."""
        now = self.services.clock()
        monitoring = self.services.store.monitoring()
        if not await monitoring.claim_sample(int(now // INTERVAL_S), SLOT_TTL_MS):
            return False
        sample = await self.sample(now)
        await monitoring.append_sample(json.dumps(sample, separators=(",", ":")), KEEP)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait_s = INTERVAL_S - self.services.clock() % INTERVAL_S + WAKE_AFTER_S
            if await pause(stop, wait_s):
                return
            try:
                await self.tick()
            except StoreUnavailable as exc:
                if not self._store_down:
                    log.warning("dashboard_sample_store_unavailable", error=str(exc))
                self._store_down = True
            except Exception:
                # A bug: logged with its traceback, and the next slot is tried; the service goes on.
                log.exception("dashboard_sample_failed")
            else:
                self._store_down = False


async def recent(services: Services) -> dict[str, Any]:
    """What ``GET /v1/admin/dashboard/data`` answers: the last 15 minutes of samples, oldest first."""
    since = services.clock() - WINDOW_S
    samples = [json.loads(text) for text in await services.store.monitoring().samples(KEEP)]
    return {"interval_s": INTERVAL_S, "samples": [s for s in samples if s.get("t", 0) > since]}
