"""``nba simulate``: drive the service with the simulator's population (models/simulate.py).

Two ways to run it:

- on the wall clock (the default): against a service over HTTP, one the command starts (``nba serve``
  on an embedded Redis, with its learner) or one at ``--url``. What it measures includes the real
  delays between a click and the scorer that learned it; a seed fixes the visitors, not the service's
  side (its exploration draws and when a snapshot reaches the workers depend on timing);
- on simulated time (``--simulated-clock``): the real app in this process, called through httpx's ASGI
  transport, on a throwaway redis-server, with a learner on the same store, all on one simulated clock
  (:func:`simulated_service`). Nothing runs in the background: between visits the clock moves on, the
  learner takes its rounds and the worker looks for snapshots at the simulated times they are due.
  Decision ids count up instead of being random, so the service's exploration draws repeat too: a
  seed fixes the whole run. It also runs several times faster than the wall-clock pace.

docs/simulation.md shows runs of both and what they say.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import structlog
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.settings import Settings
from app.snapshots import Models
from feature_store import ProfileStore
from feature_store.embedded import temporary
from feature_store.features import feature_names
from models.learner import Learner
from models.local_service import ServiceNotReady, running_service
from models.simulate import SimulationError, SimulationResult, catalogue_path, drive, plot, simulate
from policies.catalogue import load

SIMULATED_START: Final = 1_795_000_000.0  # 2026-11-18T09:46:40Z: every run sees the same hours of the day
LEARNER_ROUND_S: Final = 0.1  # how often an idle ``nba learn`` takes a round


@dataclass(slots=True)
class SimulatedClock:
    now: float = SIMULATED_START

    def __call__(self) -> float:
        return self.now


@dataclass(slots=True)
class SimulatedService:
    """The service and its learner on one simulated clock; :meth:`until` moves time forward."""

    client: httpx.AsyncClient
    clock: SimulatedClock
    learner: Learner
    models: Models
    store: ProfileStore
    every: dict[str, float]
    due: dict[str, float] = field(default_factory=dict)

    async def until(self, when: float) -> None:
        """Move the clock to ``when``, running every learner round and model refresh due by then, each
        at its own time."""
        while (task := min(self.due, key=self.due.__getitem__)) and self.due[task] <= when:
            self.clock.now = self.due[task]
            if task == "learn":
                await self.learner.step()
                await self.learner.publish_if_due()
            else:
                await self.models.refresh(self.store.learning())
            self.due[task] += self.every[task]
        self.clock.now = max(self.clock.now, when)


@asynccontextmanager
async def simulated_service(policies: Path, **settings: Any) -> AsyncIterator[SimulatedService]:
    """The service with the catalogue at ``policies`` (and any other ``settings``) on simulated time,
    on a throwaway redis-server that is stopped at the end."""
    clock = SimulatedClock()
    ids = itertools.count(1)

    def decision_ids(now_ms: int) -> str:
        return f"d-{now_ms:012x}{next(ids):016x}"

    with temporary() as server:
        config = Settings(
            _env_file=None,
            redis_url=server.url,
            policies=policies,
            # Simulated time: a slow moment of this machine must not turn a decision into a fallback.
            decision_budget_ms=10_000,
            log_format="json",
            **settings,
        )
        models = Models()
        app = create_app(config, clock=clock, decision_ids=decision_ids, models=models, watch=False)
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        catalogue = load(policies, feature_names())
        store = ProfileStore.connect(server.url, clock=clock)
        learner = Learner(
            store.learning(),
            lambda: catalogue,
            clock=clock,
            publish_every_s=config.learner_publish_s,
            pace=clock,
        )
        try:
            await store.learning().ensure_groups()
            async with LifespanManager(app) as manager:
                transport = httpx.ASGITransport(app=manager.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://nba.simulated") as client:
                    yield SimulatedService(
                        client,
                        clock,
                        learner,
                        models,
                        store,
                        every={"learn": LEARNER_ROUND_S, "refresh": config.model_refresh_s},
                        due={"learn": clock.now, "refresh": clock.now},
                    )
        finally:
            await store.aclose()


async def simulate_on_simulated_time(
    *,
    decisions: int,
    seed: int,
    progress: bool = True,
    customers: int = 300,
    rate: float = 40.0,
    page_views: bool = True,
    **settings: Any,
) -> SimulationResult:
    """As :func:`models.simulate.simulate`, against :func:`simulated_service` with the simulation
    catalogue: ``rate`` visits per simulated second."""
    async with simulated_service(catalogue_path(), **settings) as service:

        async def pace(i: int) -> None:
            await service.until(SIMULATED_START + i / rate)

        return await drive(service.client, pace, decisions, seed, customers, progress, page_views)


def main(argv: Sequence[str] | None = None) -> int:
    """``nba simulate [--url URL | --simulated-clock] [--decisions N] [--seed S] [--out PNG] ...``."""
    parser = argparse.ArgumentParser(
        prog="nba simulate",
        description="Drive the service with a synthetic population whose true responses are known, and "
        "compare what it learns with uniform random and the oracle (docs/simulation.md).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        help="a running service with the simulation catalogue (nba serve --policies "
        f"{catalogue_path()}); default: start one on an embedded Redis, with its learner",
    )
    where.add_argument(
        "--simulated-clock",
        action="store_true",
        help="run the service in this process on simulated time: the seed fixes the whole run",
    )
    parser.add_argument("--decisions", type=int, default=3000, help="visits to simulate (default 3000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the population and its luck (default 1)")
    parser.add_argument("--customers", type=int, default=300, help="population size (default 300)")
    parser.add_argument("--rate", type=float, default=40.0, help="decisions per second at most (default 40)")
    parser.add_argument("--out", type=Path, default=Path("docs/simulation.png"), help="the PNG to write")
    parser.add_argument("--key", help="an API key with the web scope, for a service that needs one")
    parser.add_argument(
        "--no-page-views",
        action="store_true",
        help="decide calls carry no page view event (by default each does, as a website's would)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.decisions < 1 or args.customers < 1 or args.rate <= 0:
        parser.error("--decisions, --customers and --rate must be positive")
    if args.simulated_clock and args.key:
        parser.error("--key is for a service at --url; the simulated service needs none")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("nba simulate: the plot needs matplotlib: pip install 'nba[tools]'", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "decisions": args.decisions,
        "seed": args.seed,
        "progress": not args.no_progress,
        "customers": args.customers,
        "rate": args.rate,
        "page_views": not args.no_page_views,
    }
    try:
        if args.simulated_clock:
            result = asyncio.run(simulate_on_simulated_time(**options))
        elif args.url:
            result = asyncio.run(simulate(args.url, api_key=args.key, **options))
        else:
            with running_service("--policies", str(catalogue_path())) as service:
                result = asyncio.run(simulate(service.base_url, **options))
    except (SimulationError, ServiceNotReady, httpx.HTTPError) as exc:
        print(f"nba simulate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result.summary(), separators=(",", ":")))
    plot(result, args.out)
    print(f"nba simulate: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
