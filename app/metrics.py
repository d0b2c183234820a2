"""Prometheus metrics: the names, types and labels of docs/metrics.md, and where they are counted.

Counters and histograms are module-level objects of ``prometheus_client`` (its way: a metric is declared
once per process). With ``PROMETHEUS_MULTIPROC_DIR`` set before this module is first imported, each
worker process writes its values to files in that folder and a scrape of any worker sums them all
(https://prometheus.github.io/client_python/multiprocess/); ``nba serve`` sets it up. Without it (tests,
``uvicorn --factory app.main:create_app`` with one worker) they live in this process.

The gauges that describe the deployment rather than a process (backlogs in Redis, the learner's lag)
are read from Redis when ``/metrics`` is scraped, by the worker that answers, within a short timeout:
when the store is slow or away they are left out and ``nba_scrape_store_success`` says 0.

What is counted where:

- every HTTP request: :class:`HttpMetrics`, an ASGI middleware (the route's template, never the path);
- decisions, their duration and the funnel's drop-outs: :func:`decided`, from ``Services.decide``;
- events ingested: :func:`ingested`, from ``Services.ingest`` and ``decide``;
- every public call of the profile store: :class:`ObservedStore`, which wraps them all in one place;
- trigger firings: :func:`trigger_fired`, from app/triggers.py;
- webhook deliveries and their attempts: :func:`delivery` and :data:`DELIVERY_SECONDS`, app/delivery.py.

Children of labelled metrics are cached in plain dicts: ``labels()`` takes a lock and converts every
value, which a decision would pay several times over.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from prometheus_client import (
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feature_store import ProfileStore, StoreUnavailable
from feature_store.monitoring import Backlogs
from feature_store.redis_config import Finding
from policies.funnel import Verdict

if TYPE_CHECKING:
    from app.services import Services

# The `_created` series (one per labelled child) double what Prometheus stores for nothing we use.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Whether this process writes to PROMETHEUS_MULTIPROC_DIR: decided by prometheus_client when it was first
# imported, so read from it rather than from the environment, which may have changed since.
MULTIPROCESS: Final = bool(getattr(values.ValueClass, "_multiprocess", False))

# Seconds, fine enough for sub-millisecond work (the contract's).
BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
)  # fmt: skip
# The classic text format, which every Prometheus reads (prometheus_client's "latest" is 1.0.0, for UTF-8
# names, which these are not: the body is the same).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_STORE_TIMEOUT_S: Final = 0.25  # the at-scrape reads of Redis; a slow store never hangs a scrape

HTTP_SECONDS = Histogram(
    "nba_http_request_duration_seconds",
    "Every HTTP request, measured in the ASGI app, by route template, method and status.",
    ["route", "method", "status"],
    buckets=BUCKETS,
)
DECISIONS = Counter(
    "nba_decisions_total",
    "Decisions made, by placement, first chosen action, group, fallback and source (web or trigger).",
    ["placement", "action", "group", "fallback", "source"],
)
DECISION_SECONDS = Histogram(
    "nba_decision_duration_seconds",
    "Time to decide inside the service (profile read + funnel), as logged in latency_ms.",
    ["placement", "source"],
    buckets=BUCKETS,
)
DROPOUTS = Counter(
    "nba_funnel_dropouts_total",
    "Actions of the placement that a decision did not choose, by the funnel's verdict status.",
    ["placement", "reason"],
)
STORE_SECONDS = Histogram(
    "nba_store_operation_duration_seconds",
    "Calls of the profile store (Redis), per operation.",
    ["operation"],
    buckets=BUCKETS,
)
STORE_ERRORS = Counter(
    "nba_store_errors_total", "Store calls that failed (unreachable or timed out).", ["operation"]
)
EVENTS = Counter("nba_events_total", "Events ingested, accepted or duplicate.", ["result"])
TRIGGERS_FIRED = Counter("nba_triggers_fired_total", "Trigger firings by outcome.", ["trigger", "outcome"])
DELIVERIES = Counter(
    "nba_webhook_deliveries_total", "Webhook delivery attempts by result.", ["destination", "result"]
)
DELIVERY_SECONDS = Histogram(
    "nba_webhook_delivery_duration_seconds",
    "Time of each delivery attempt (request to answer or timeout).",
    ["destination"],
    buckets=BUCKETS,
)

# Label values that come from clients are bounded: an unknown method is "other", like an unknown route.
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_EVENTS_ACCEPTED, _EVENTS_DUPLICATE = EVENTS.labels(result="accepted"), EVENTS.labels(result="duplicate")

_http: dict[tuple[str, str, int], Any] = {}
_decisions: dict[tuple[str, str, str, str, str], Any] = {}
_decision_seconds: dict[tuple[str, str], Any] = {}
_dropouts: dict[tuple[str, str], Any] = {}


def _child(cache: dict[Any, Any], metric: Any, key: tuple[Any, ...]) -> Any:
    child = cache.get(key)
    if child is None:
        child = cache[key] = metric.labels(*key)
    return child


# HTTP ----------------------------------------------------------------------------------------------------


def route_template(scope: Scope) -> str:
    """The template of the route that matched (``/v1/customers/{customer_id}``), or ``other``."""
    route = scope.get("route")
    if route is None:
        return "other"
    return str(getattr(route, "path_format", None) or getattr(route, "path", None) or "other")


class HttpMetrics:
    """ASGI middleware: ``nba_http_request_duration_seconds`` for every HTTP request.

    The router records the route it matched in the scope it was handed, which is this one; an exception
    that escapes the app is answered 500 further out, and counted as such here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            http_request(route_template(scope), scope["method"], status, time.perf_counter() - started)


def http_request(template: str, method: str, status: int, seconds: float) -> None:
    """Count one HTTP request: by :class:`HttpMetrics`, and by the decisions' fast lane, which answers
    in front of it (app/routes/decisions.py)."""
    key = (template, method if method in _METHODS else "other", status)
    _child(_http, HTTP_SECONDS, key).observe(seconds)


# Decisions and events ------------------------------------------------------------------------------------


def decided(
    placement: str,
    action: str,
    group: str,
    *,
    fallback: bool,
    source: str,
    seconds: float,
    offered: Sequence[Verdict] = (),
) -> None:
    """Count one decision, its duration, and the drop-out of each action offered on the placement that
    it did not choose (``offered``: the verdicts of the placement's actions; the catalogue's others
    never entered its funnel and are not drop-outs)."""
    _child(_decisions, DECISIONS, (placement, action, group, "true" if fallback else "false", source)).inc()
    _child(_decision_seconds, DECISION_SECONDS, (placement, source)).observe(seconds)
    if not offered:
        return
    dropped: dict[str, int] = {}
    for verdict in offered:
        if verdict.status != "chosen":
            dropped[verdict.status] = dropped.get(verdict.status, 0) + 1
    for status, count in dropped.items():
        _child(_dropouts, DROPOUTS, (placement, status)).inc(count)


def ingested(accepted: int, duplicates: int) -> None:
    if accepted:
        _EVENTS_ACCEPTED.inc(accepted)
    if duplicates:
        _EVENTS_DUPLICATE.inc(duplicates)


def trigger_fired(trigger: str, outcome: str) -> None:
    """``outcome`` as in ``Fired.outcome`` (``dropped:late``), reported as ``dropped_late``."""
    TRIGGERS_FIRED.labels(trigger, outcome.replace(":", "_")).inc()


def delivery(destination: str, result: str) -> None:
    """``result``: ``delivered``, ``retry`` or ``dead``."""
    DELIVERIES.labels(destination, result).inc()


# The profile store ---------------------------------------------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R")


def _timed(operation: str, method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    seconds, errors = STORE_SECONDS.labels(operation), STORE_ERRORS.labels(operation)

    @functools.wraps(method)
    async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except StoreUnavailable:
            errors.inc()
            raise
        finally:
            # Also when cut short (a decision's budget): a call that was slow is what this is for.
            seconds.observe(time.perf_counter() - started)

    return timed


class ObservedStore(ProfileStore):
    """The profile store, each public call timed (``operation`` is the method's name) and its failures
    counted. Public methods of the store never call each other (store.py), so nothing counts twice."""


STORE_OPERATIONS: Final = tuple(
    name
    for name, member in vars(ProfileStore).items()
    if not name.startswith("_") and name != "aclose" and inspect.iscoroutinefunction(member)
)
for _name in STORE_OPERATIONS:
    setattr(ObservedStore, _name, _timed(_name, getattr(ProfileStore, _name)))


# Exposition ----------------------------------------------------------------------------------------------


class _Cumulative(Collector):
    """This deployment's counters and histograms: every worker's (multiprocess), or this process's."""

    def collect(self) -> Iterable[Metric]:
        if MULTIPROCESS:
            found: Iterable[Metric] = MultiProcessCollector(None).collect()  # type: ignore[no-untyped-call]
            return found
        return REGISTRY.collect()


class _Scrape(Collector):
    def __init__(self, *parts: Iterable[Metric]) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part


def cumulative() -> Iterable[Metric]:
    return _Cumulative().collect()


async def _in_time(read: Awaitable[R]) -> R | None:
    """What ``read`` gives, or ``None`` when the store did not answer within the scrape's timeout."""
    try:
        async with asyncio.timeout(SCRAPE_STORE_TIMEOUT_S):
            return await read
    except (StoreUnavailable, TimeoutError):
        return None


async def backlogs(services: Services) -> Backlogs | None:
    """The deployment's backlogs from Redis, or ``None`` when the store did not answer in time."""
    return await _in_time(services.store.monitoring().backlogs(int(services.clock() * 1000)))


@dataclass(frozen=True, slots=True)
class StoreReadings:
    """What a scrape reads from Redis: the deployment's backlogs, and the settings of Redis that are not
    what the service needs (``None`` when Redis refuses to say)."""

    backlogs: Backlogs
    config: list[Finding] | None


async def store_readings(services: Services) -> StoreReadings | None:
    """Both readings; ``None`` when the store did not answer both within the scrape's timeout."""

    async def both() -> StoreReadings:
        monitoring = services.store.monitoring()
        found = await monitoring.backlogs(int(services.clock() * 1000))
        return StoreReadings(found, await monitoring.config())

    return await _in_time(both())


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def at_scrape(services: Services, readings: StoreReadings | None) -> list[Metric]:
    """The gauges read at scrape: this process's model snapshot, the deployment's backlogs, and what is
    wrong with Redis's configuration."""
    snapshot = services.models.scorer.snapshot
    info = GaugeMetricFamily(
        "nba_model_snapshot_info", "The snapshot version this process scores with.", labels=["version"]
    )
    info.add_metric([snapshot.version], 1)
    out: list[Metric] = [info]
    if snapshot.published_ms:  # the catalogue's priors ("prior") have no age
        age = services.clock() - snapshot.published_ms / 1000
        documentation = "Age of the snapshot this process scores with."
        out.append(_gauge("nba_model_snapshot_age_seconds", documentation, age))
    documentation = "1 when the at-scrape reads of Redis answered in time, else 0 (their gauges left out)."
    out.append(_gauge("nba_scrape_store_success", documentation, int(readings is not None)))
    if readings is None:
        return out
    if readings.config is not None:
        problems = GaugeMetricFamily(
            "nba_redis_config_problems",
            "Settings of Redis that are not what the service needs, by what they risk: data_loss "
            "(an eviction policy, no append-only file) or memory (compact encodings' limits).",
            labels=["effect"],
        )
        lose = sum(f.loses_data for f in readings.config)
        problems.add_metric(["data_loss"], lose)
        problems.add_metric(["memory"], len(readings.config) - lose)
        out.append(problems)
    found = readings.backlogs
    lag = GaugeMetricFamily(
        "nba_learner_lag", "Entries not yet read by the learner's consumer group.", labels=["stream"]
    )
    for stream, entries in found.learner_lag.items():
        lag.add_metric([stream], entries)
    out += [
        lag,
        _gauge(
            "nba_learner_pending_rewards",
            "Decisions waiting for their attribution window to close.",
            found.pending_rewards,
        ),
        _gauge("nba_triggers_pending", "Trigger instances waiting.", found.triggers_pending),
        _gauge("nba_triggers_due", "Trigger instances due now and not yet fired.", found.triggers_due),
        _gauge("nba_dead_letters", "Dead letters waiting.", found.dead_letters),
        _gauge("nba_outbox_due", "Deliveries waiting.", found.outbox_due),
    ]
    return out


async def exposition(services: Services) -> bytes:
    """The text of ``GET /metrics``."""
    gauges = at_scrape(services, await store_readings(services))
    return generate_latest(_Scrape(cumulative(), gauges))
