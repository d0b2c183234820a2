"""The application factory. Run with ``nba serve`` or ``uvicorn --factory app.main:create_app``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypedDict

import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app import compiled, dashboard_data, errors, metrics
from app import logging as app_logging
from app.auth import KeyRing
from app.catalogues import Catalogues
from app.delivery import DeliveryConfig, DeliveryWorker
from app.limits import BodyLimits
from app.routes import admin, customers, decisions, deliveries, events, health, reports, webhooks
from app.routes import dashboard as dashboard_page
from app.routes import dashboard_data as dashboard_data_routes
from app.routes import metrics as metrics_routes
from app.services import Services, new_decision_id, store_config
from app.settings import Settings
from app.snapshots import Models
from app.triggers import TriggerWorker
from feature_store import StoreUnavailable
from feature_store.redis_config import Finding
from policies.catalogue import CatalogueInvalid, default_path

log = structlog.get_logger("nba")

# The cyclic collector's young generation runs when allocations outnumber frees by this many (Python's
# default is 700). A decision allocates and frees most of its objects across its two Redis round trips,
# so with 32 decisions in flight the default count was passed every 27 decisions: 37 young collections
# a thousand decisions, 7 to 10 us of the worker per decision (3%), finding no cycle to free (a decision
# leaves none, good or refused). The framework floor, which allocates nothing across an await, ran 0.05
# a thousand requests. docs/performance.md "The young generation's collections" has the measures.
YOUNG_COLLECTION_THRESHOLD = 10_000


def report_config(findings: list[Finding]) -> None:
    """An external Redis's settings that are not what the service needs, one line each at start: an
    error where data already accepted may be lost, else a warning (feature_store/redis_config.py)."""
    for f in findings:
        line = log.error if f.loses_data else log.warning
        line("redis_config", setting=f.setting, value=f.value, want=f.want, why=f.why)


class Service(FastAPI):
    """The FastAPI app, with ``POST /v1/decide``, most of its traffic, sent down the decisions' fast lane
    (app/routes/decisions.py ``FastDecide``) in front of all the middleware."""

    fast_lane: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.fast_lane is not None
            and scope["type"] == "http"
            and scope["path"] == decisions.ROUTE
            and scope["method"] == "POST"
        ):
            await self.fast_lane(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def full_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """What FastAPI does with a request: its middleware, then the route; where the lane hands on to."""
        await super().__call__(scope, receive, send)


class State(TypedDict):
    services: Services
    models_followed: bool  # a background task loads the models (watch=True), so /readyz waits for them


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    decision_ids: Callable[[int], str] = new_decision_id,
    models: Models | None = None,
    watch: bool = True,
) -> FastAPI:
    """Build the service. Without ``settings`` they are read from the environment (``NBA_*``).

    The keywords are for driving the service on simulated time (tests, ``nba simulate
    --simulated-clock``): ``clock`` and ``decision_ids`` replace the wall clock and the random decision
    ids; with ``watch=False`` no background task follows the store, and whoever holds ``models`` calls
    its ``refresh`` when the simulated time says so.
    """
    settings = settings or Settings()
    if (reason := settings.refuse_reason()) is not None:
        raise SystemExit(reason)
    salt = settings.log_salt.get_secret_value().encode() if settings.log_salt else None
    app_logging.configure(settings.log_format, salt)
    try:
        catalogues = Catalogues(settings.policies)
    except CatalogueInvalid as exc:
        raise SystemExit(
            f"the catalogue at {settings.policies or default_path()} is invalid:\n{exc}"
        ) from exc

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            url = settings.redis_url
            if url is None:
                # Started on the loop's own thread (a blocking moment before any request): the server is
                # told to die with the thread that started it, and a pool thread may come and go.
                embedded = settings.embedded_redis().start()
                stack.callback(embedded.stop)
                url = embedded.url
                log.info("embedded_redis_started", data_dir=str(embedded.data_dir))
            store = metrics.ObservedStore.connect(  # every store call timed (app/metrics.py)
                url,
                store_config(settings),
                clock=clock,
                timeout_s=settings.store_timeout_ms / 1000,
                max_connections=settings.store_max_connections,
            )
            stack.push_async_callback(store.aclose)
            services = Services(
                settings,
                store,
                KeyRing(settings.api_keys),
                catalogues,
                models or Models(),
                clock,
                decision_ids,
            )
            try:
                await store.load_scripts()
                if settings.redis_url is not None:  # the embedded Redis is configured by the service
                    report_config(await store.check_config())
            except StoreUnavailable as exc:  # the store may come later; /readyz tells
                log.warning("store_not_ready_at_start", error=str(exc))
            await catalogues.start(store)
            if watch:  # the first model before the first request (and /readyz waits for it)
                with contextlib.suppress(StoreUnavailable):
                    await services.models.refresh(store.learning())
            build = compiled.status()
            log.info(
                "service_started",
                open=services.keys.open,
                catalogue=catalogues.live.version,
                compiled=len(build.compiled),  # of the decision path's modules (app/compiled.py)
            )
            if build.reason is not None:  # the same service, a tenth slower per decision
                log.warning("modules_interpreted", modules=len(compiled.MODULES), reason=build.reason)
            # Webhook deliveries (app/delivery.py), to the destinations of whichever catalogue is live.
            # A delivery is the contact it makes: the contact policy counts it once it succeeded.
            delivering = DeliveryWorker(
                store.outbox(),
                lambda: catalogues.live.destinations,
                DeliveryConfig.of(settings),
                clock=clock,
                on_delivered=services.record_delivery,
            )
            stack.push_async_callback(delivering.aclose)
            # Timed triggers (app/triggers.py): decisions made when time passes, delivered by the above.
            firing = TriggerWorker(
                services,
                store.triggers(),
                store.outbox(),
                clock=clock,
                lease_ms=round(settings.trigger_lease_s * 1000),
            )
            # Every background loop ends by this event, not by cancellation (models/stopping.py says why).
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as background:
                if watch:
                    background.create_task(catalogues.watch(store, stop, settings.catalogue_watch_s))
                    background.create_task(
                        services.models.watch(store.learning(), stop, settings.model_refresh_s)
                    )
                    background.create_task(delivering.run(stop))
                    background.create_task(firing.run(stop, settings.trigger_poll_s))
                    # The dashboard's samples (app/dashboard_data.py): one worker writes each 10-s one.
                    background.create_task(dashboard_data.Sampler(services).run(stop))
                # What start-up built (the catalogue, the models, imports) lives as long as the process:
                # out of the collector's sight, full collections stop scanning it on every pass.
                gc.collect()
                gc.freeze()
                thresholds = gc.get_threshold()
                gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
                yield {"services": services, "models_followed": watch}
                gc.set_threshold(*thresholds)
                gc.unfreeze()  # back in sight: in a process that builds the app again (tests), it can go
                stop.set()  # the deliveries in flight finish (within their timeout), none start
        app_logging.flush()  # the lines that wait (app/logging.py Lines), before the worker ends

    app = Service(
        title="nba: next-best-action decisioning",
        version="1",
        summary="Live customer profiles, next best actions, learning and measurement.",
        lifespan=lifespan,
    )
    errors.install(app, retry_after_s=settings.retry_after_s)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.HttpMetrics)
    app.add_middleware(app_logging.RequestIds)  # outermost: every log line of a request carries its id
    for module in (events, decisions, customers, admin, health, webhooks, deliveries):
        app.include_router(module.router)
    app.include_router(admin.models_router)
    app.include_router(dashboard_page.router)  # GET /dashboard, the page and its assets
    app.include_router(metrics_routes.router)
    app.include_router(dashboard_data_routes.router)
    app.include_router(reports.router)
    app.fast_lane = decisions.FastDecide(app.full_stack, max_bytes=settings.max_body_bytes)
    return app
