"""The ``nba`` command.

``nba serve`` runs the API. With no ``NBA_REDIS_URL`` it first starts a private redis-server with
persistence in the data folder and hands its address to every worker, and runs a learner beside
them; on exit it stops both.

``nba learn`` runs the learner (models/learner.py) against ``NBA_REDIS_URL``: one per deployment.

``nba evaluate`` (models/evaluate.py) and ``nba simulate`` (app/simulation.py) are offline tools with
their own options (``--help``); they need the ``tools`` extra.

``nba report [--from T] [--to T] [--json]`` prints the uplift report (models/uplift.py, docs/uplift.md)
from ``NBA_REDIS_URL``: what ``GET /v1/reports/uplift`` answers, as a table. Exit status 0 when a report
was printed, 1 when Redis cannot be reached, 2 for a missing ``NBA_REDIS_URL``, an invalid catalogue or
an unreadable time.

``nba check [PATH]`` checks a catalogue folder (by default ``NBA_POLICIES``, else the shipped one) as
the service would load it, and prints every problem, one per line: ``file: where: problem``. Exit
status 0 when it is valid, 1 when it is not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from app.settings import Settings

# How uvicorn serves the API; the benchmark's framework floor (load_tests/floor.py) is served the same way.
SERVER_OPTIONS: Final[dict[str, Any]] = {"log_level": "warning", "access_log": False, "proxy_headers": True}


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "data_dir": args.data_dir,
        "policies": args.policies,
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"NBA_{name.upper()}"] = str(value)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"nba serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    if (reason := settings.refuse_reason()) is not None:
        print(f"nba serve: {reason}", file=sys.stderr)
        return 2

    import uvicorn

    from feature_store.features import feature_names
    from policies.catalogue import CatalogueInvalid, default_path, load

    try:
        load(settings.policies or default_path(), feature_names())
    except CatalogueInvalid as exc:
        print(f"nba serve: the catalogue is invalid ({len(exc.problems)} problems):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2

    from feature_store.embedded import EmbeddedRedisError, background_child

    embedded = learner = None
    if settings.redis_url is None:
        try:
            embedded = settings.embedded_redis().start()
        except EmbeddedRedisError as exc:
            print(f"nba serve: {exc}", file=sys.stderr)
            return 2
        # Every worker (a separate process) reads its settings from the environment.
        os.environ["NBA_REDIS_URL"] = embedded.url
        print(f"nba serve: embedded Redis with data in {embedded.data_dir}", file=sys.stderr)
        # One command runs everything: the learner too, as its own process (the one writer of models).
        # It dies with this process even if this one is killed outright (its Redis would be gone too),
        # and it learns on time that Redis and the workers leave (docs/performance.md).
        learner = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "learn"], stdin=subprocess.DEVNULL, preexec_fn=background_child
        )
    # Set up for the workers only (the learner above has no metrics of its own to share).
    metrics_dir = _metrics_dir(settings.workers)
    if settings.log_salt is None:  # one per run, so that every worker logs a customer under one pseudonym
        os.environ["NBA_LOG_SALT"] = secrets.token_hex(32)
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            **SERVER_OPTIONS,
        )
    finally:
        if learner is not None:
            learner.send_signal(signal.SIGTERM)
            try:
                learner.wait(timeout=10)
            except subprocess.TimeoutExpired:
                learner.kill()
        if embedded is not None:
            embedded.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _metrics_dir(workers: int) -> Path | None:
    """Make ``PROMETHEUS_MULTIPROC_DIR`` ready before any worker starts, so that every worker's counters
    are summed by whichever one is scraped (app/metrics.py). A folder given in the environment is
    emptied of the last run's files; without one, a fresh one is made, and returned to be removed at
    exit. Exited workers' files stay: their counts are part of the totals (and no gauge is kept in them,
    so there is nothing for ``mark_process_dead`` to remove).

    One worker without a folder given has nothing to sum: its metrics stay in its memory, where counting
    costs a third of writing each change to a file (a decision counts about fifteen; docs/performance.md).
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        return None
    if workers == 1:
        return None
    folder = Path(tempfile.mkdtemp(prefix="nba-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def _learn(_: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"nba learn: invalid settings: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url is None:
        print(
            "nba learn: set NBA_REDIS_URL to the Redis the service uses (nba serve on its embedded Redis "
            "runs its own learner)",
            file=sys.stderr,
        )
        return 2
    from policies.catalogue import CatalogueInvalid

    try:
        return asyncio.run(_run_learner(settings))
    except CatalogueInvalid as exc:
        print(f"nba learn: the catalogue is invalid:\n{exc}", file=sys.stderr)
        return 2


async def _run_learner(settings: Settings) -> int:
    from app import logging as app_logging
    from app.catalogues import Catalogues
    from app.services import store_config
    from feature_store import ProfileStore
    from models.learner import Learner

    app_logging.configure(settings.log_format)
    catalogues = Catalogues(settings.policies)
    store = ProfileStore.connect(settings.redis_url or "", store_config(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    learner = Learner(
        store.learning(),
        lambda: catalogues.live,
        publish_every_s=settings.learner_publish_s,
        log_max=settings.decision_log_max,
    )
    try:
        async with asyncio.TaskGroup() as background:
            background.create_task(catalogues.watch(store, stop, settings.catalogue_watch_s))
            await _learn_until(learner, stop)
    finally:
        await store.aclose()
    return 0


async def _learn_until(learner: Any, stop: asyncio.Event) -> None:
    """Run the learner; while the store is away, wait and try again rather than die."""
    from feature_store import StoreUnavailable
    from models.stopping import pause

    while not stop.is_set():
        try:
            await learner.run(stop)
        except StoreUnavailable as exc:
            print(f"nba learn: the store is unavailable ({exc}); retrying", file=sys.stderr)
            await pause(stop, 1.0)


def _report(args: argparse.Namespace) -> int:
    import json
    import time

    from models import uplift
    from models.evaluate import parse_when

    url = os.environ.get("NBA_REDIS_URL")
    if not url:
        print("nba report: set NBA_REDIS_URL to the Redis the service uses", file=sys.stderr)
        return 2
    now_ms = int(time.time() * 1000)
    try:
        since = parse_when(args.since, now_ms) if args.since else None
        until = parse_when(args.until, now_ms) if args.until else None
    except ValueError as exc:
        print(f"nba report: {exc}", file=sys.stderr)
        return 2
    since_ms, until_ms = uplift.default_range(since, until, now_ms)
    if since_ms >= until_ms:
        print("nba report: --from must be before --to", file=sys.stderr)
        return 2
    from feature_store import StoreUnavailable
    from feature_store.evaluation import EvaluationStore
    from feature_store.features import feature_names
    from policies.catalogue import CatalogueInvalid, default_path, load

    try:
        catalogue = load(Path(os.environ.get("NBA_POLICIES") or default_path()), feature_names())
    except CatalogueInvalid as exc:
        print(f"nba report: the catalogue is invalid:\n{exc}", file=sys.stderr)
        return 2

    async def read() -> uplift.Report:
        store = EvaluationStore.connect(url)
        try:
            return await uplift.report(store, catalogue, since_ms=since_ms, until_ms=until_ms, now_ms=now_ms)
        finally:
            await store.aclose()

    try:
        found = asyncio.run(read())
    except StoreUnavailable as exc:
        print(f"nba report: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(found.to_dict(), indent=2) if args.json else uplift.render(found))
    return 0


def _check(args: argparse.Namespace) -> int:
    from feature_store.features import feature_names
    from policies.catalogue import CatalogueInvalid, default_path, load

    try:
        catalogue = load(args.path or Path(os.environ.get("NBA_POLICIES") or default_path()), feature_names())
    except CatalogueInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(
        f"ok: {len(catalogue.placements)} placements, {len(catalogue.actions)} actions, "
        f"version {catalogue.version}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # The offline tools parse their own options (and import numpy, scikit-learn, matplotlib only then).
    if words and words[0] == "evaluate":
        from models import evaluate

        return evaluate.main(words[1:])
    if words and words[0] == "simulate":
        from app import simulation

        return simulation.main(words[1:])
    parser = argparse.ArgumentParser(prog="nba", description="Real-time next-best-action decisioning.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (and, by default, a private Redis)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; others need NBA_API_KEYS)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument(
        "--policies", type=Path, help="catalogue folder (default: NBA_POLICIES, else the shipped one)"
    )
    serve.add_argument("--data-dir", type=Path, help="embedded Redis data folder (default ./nba-data)")
    sub.add_parser("learn", help="run the learner (the one writer of the models) against NBA_REDIS_URL")
    sub.add_parser("evaluate", help="off-policy estimates and calibration from the decision log (see --help)")
    sub.add_parser("simulate", help="drive a service with a synthetic population and plot what it learns")
    report = sub.add_parser("report", help="the uplift report: treatment against control (NBA_REDIS_URL)")
    report.add_argument("--from", dest="since", help="decisions from: RFC 3339 or a duration ago (7d)")
    report.add_argument("--to", dest="until", help="decisions before: RFC 3339 or a duration ago (now)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    check = sub.add_parser("check", help="check a catalogue folder and list every problem")
    check.add_argument(
        "path",
        nargs="?",
        type=Path,
        help="catalogue folder or file (default: NBA_POLICIES, else the shipped one)",
    )
    args = parser.parse_args(words)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        return _check(args)
    if args.command == "learn":
        return _learn(args)
    if args.command == "report":
        return _report(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
