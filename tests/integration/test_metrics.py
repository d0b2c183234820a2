"""``GET /metrics`` (docs/metrics.md), the dashboard's samples, and readiness, against a real Redis.

Counters are process-wide and this process runs many apps, so every check is on the difference between
two scrapes. The last test runs ``nba serve`` with two worker processes and checks that a scrape of
either one counts every decision both made.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app import dashboard_data, metrics
from app.delivery import DeliveryWorker
from feature_store import keys as store_keys
from feature_store.embedded import free_port
from models.local_service import running_service
from tests.conftest import AppFactory, Clock
from tests.integration.test_delivery import SECRET, Receiver
from tests.integration.test_triggers import MINUTE, cart_add, catalogue, consent, send, service

CATALOGUE = Path(__file__).parents[1] / "fixtures" / "catalogue"
METRICS_SPEC = Path("/tmp/spec/metrics.md")
# The contract's names (docs/metrics.md), with their types.
CONTRACT = {
    "nba_http_request_duration_seconds": "histogram",
    "nba_decisions_total": "counter",
    "nba_decision_duration_seconds": "histogram",
    "nba_funnel_dropouts_total": "counter",
    "nba_store_operation_duration_seconds": "histogram",
    "nba_store_errors_total": "counter",
    "nba_events_total": "counter",
    "nba_model_snapshot_age_seconds": "gauge",
    "nba_model_snapshot_info": "gauge",
    "nba_learner_lag": "gauge",
    "nba_learner_pending_rewards": "gauge",
    "nba_triggers_pending": "gauge",
    "nba_triggers_due": "gauge",
    "nba_triggers_fired_total": "counter",
    "nba_webhook_deliveries_total": "counter",
    "nba_webhook_delivery_duration_seconds": "histogram",
    "nba_dead_letters": "gauge",
    "nba_outbox_due": "gauge",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(have)[label] for (n, have) in samples if n == name and label in dict(have)}


async def decide(client: httpx.AsyncClient, customer: str, **body: Any) -> dict[str, Any]:
    body = {"customer_id": customer, "placement": "web.product_page", "explain": True, **body}
    r = await client.post("/v1/decide", json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def test_the_contract_here_is_the_specs() -> None:
    """The names and types this file checks are the contract's (when the contract is at hand)."""
    if not METRICS_SPEC.exists():
        pytest.skip("the metric contract is not on this machine")
    rows = re.findall(r"^\| `(nba_[a-z_]+)` \| ([a-z]+)", METRICS_SPEC.read_text(), re.MULTILINE)
    assert dict(rows) == CONTRACT


async def test_traffic_is_counted_under_the_contracts_names_and_labels(make_client: AppFactory) -> None:
    async with make_client(policies=CATALOGUE, watch=False) as client:
        before = await scrape(client)
        event = {"event_id": "e-1", "customer_id": "c-1", "type": "page_view"}
        for _ in range(2):  # accepted, then a duplicate
            assert (await client.post("/v1/events", json=event)).status_code == 202
        quiet = await decide(client, "c-1")  # the banner; the chat's rule does not hold
        faqs = [
            {"customer_id": "c-2", "type": "faq_view", "properties": {"article_id": f"a{i}"}} for i in "12"
        ]
        assert (await client.post("/v1/events", json={"events": faqs})).status_code == 202
        chat = await decide(client, "c-2", event={"type": "product_view"})  # the chat; the banner not drawn
        outcome = {"decision_id": chat["decision_id"], "action_id": "proactive_chat", "type": "impression"}
        assert (await client.post("/v1/outcomes", json=outcome)).status_code == 202
        assert (await client.get("/v1/customers/c-1")).status_code == 200
        assert (await client.get("/v1/customers/c-9")).status_code == 404
        assert (await client.get("/no/such/path/c-1")).status_code == 404
        after = await scrape(client)
        text = (await client.get("/metrics")).text

    # Every name of the contract, with its type (labelled counters appear once they have a child).
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for name, kind in CONTRACT.items():
        if name == "nba_model_snapshot_age_seconds":
            continue  # the priors ("prior") have no age; checked in the dashboard test with a model
        assert types.get(name) == kind, (name, types.get(name))

    # Decisions: the first chosen action, the group, web, not a fallback.
    assert quiet["actions"][0]["action_id"] == "generic_banner"
    assert chat["actions"][0]["action_id"] == "proactive_chat"
    web = {"placement": "web.product_page", "source": "web", "fallback": "false", "group": "treatment"}
    assert delta(before, after, "nba_decisions_total") == 2
    assert delta(before, after, "nba_decisions_total", action="generic_banner", **web) == 1
    assert delta(before, after, "nba_decisions_total", action="proactive_chat", **web) == 1
    placement = {"placement": "web.product_page", "source": "web"}
    assert delta(before, after, "nba_decision_duration_seconds_count", **placement) == 2
    assert delta(before, after, "nba_decision_duration_seconds_bucket", le="+Inf", **placement) == 2
    # Drop-outs: each action of the placement not chosen, by its verdict's status; the actions not offered
    # on the placement (ineligible, "not offered on ...") never entered its funnel.
    dropped: dict[str, int] = {}
    for answer in (quiet, chat):
        for verdict in answer["explanation"]:
            if verdict["status"] != "chosen" and not verdict["reason"].startswith("not offered on"):
                dropped[verdict["status"]] = dropped.get(verdict["status"], 0) + 1
    assert dropped == {"ineligible": 1, "not_chosen": 1}
    for reason, count in dropped.items():
        got = delta(before, after, "nba_funnel_dropouts_total", placement="web.product_page", reason=reason)
        assert got == count, reason

    # Events: two posted events (one a duplicate), two FAQ reads, and the decide's product view.
    assert delta(before, after, "nba_events_total", result="accepted") == 4
    assert delta(before, after, "nba_events_total", result="duplicate") == 1

    # Store operations, one per public call; decide's are one read and one record.
    for operation, calls in {
        "ingest": 3,
        "apply_and_read": 2,
        "record_decision": 2,
        "decision": 1,
        "record_outcome": 1,
        "profile": 2,
    }.items():
        got = delta(before, after, "nba_store_operation_duration_seconds_count", operation=operation)
        assert got == calls, operation
    assert delta(before, after, "nba_store_errors_total") == 0

    # HTTP: route templates, never a path with an id in it.
    http = "nba_http_request_duration_seconds_count"
    assert delta(before, after, http, route="/v1/decide", method="POST", status="200") == 2
    assert delta(before, after, http, route="/v1/outcomes", method="POST", status="202") == 1
    assert delta(before, after, http, route="/v1/customers/{customer_id}", method="GET", status="200") == 1
    assert delta(before, after, http, route="/v1/customers/{customer_id}", method="GET", status="404") == 1
    assert delta(before, after, http, route="other", method="GET", status="404") == 1
    assert delta(before, after, http, route="/metrics", method="GET", status="200") == 1
    routes = label_values(after, http, "route")
    assert not [route for route in routes if "c-" in route], routes

    # At scrape: this process's model, and the backlogs in Redis (no learner ran: its group does not exist,
    # so every logged entry is unread).
    assert after[("nba_model_snapshot_info", frozenset({("version", "prior")}))] == 1
    assert total(after, "nba_scrape_store_success") == 1
    assert total(after, "nba_learner_lag", stream="decisions") == 2
    assert total(after, "nba_learner_lag", stream="outcomes") == 1
    for name in ("nba_learner_pending_rewards", "nba_triggers_pending", "nba_dead_letters", "nba_outbox_due"):
        assert total(after, name) == 0, name


async def test_the_learner_lag_is_what_its_group_has_not_read(
    make_client: AppFactory, raw_redis: redis.Redis
) -> None:
    async with make_client(policies=CATALOGUE, watch=False) as client:
        for customer in ("c-1", "c-2", "c-3"):
            await decide(client, customer)
        raw_redis.xgroup_create(store_keys.DECISION_LOG, "learner", id="0")
        raw_redis.xreadgroup("learner", "learner", {store_keys.DECISION_LOG: ">"}, count=2)
        assert total(await scrape(client), "nba_learner_lag", stream="decisions") == 1
        raw_redis.xreadgroup("learner", "learner", {store_keys.DECISION_LOG: ">"}, count=10)
        assert total(await scrape(client), "nba_learner_lag", stream="decisions") == 0


async def test_triggers_deliveries_and_their_backlogs_are_counted(
    redis_url: str, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBA_TEST_PLATFORM_SECRET", SECRET)
    async with (
        Receiver() as receiver,
        service(redis_url, clock, catalogue(tmp_path, url=receiver.url)) as (client, services, worker),
    ):
        before = await scrape(client)
        # c-1 leaves a cart; c-2 empties theirs again (the condition no longer holds when it fires).
        await send(client, consent("c-1"), cart_add("c-1"), consent("c-2"), cart_add("c-2"))
        removed = {"customer_id": "c-2", "type": "remove_from_cart", "properties": {"item_id": "sku-1"}}
        await send(client, removed)
        waiting = await scrape(client)
        assert (total(waiting, "nba_triggers_pending"), total(waiting, "nba_triggers_due")) == (2, 0)
        clock.advance(30 * MINUTE)
        due = await scrape(client)
        assert (total(due, "nba_triggers_pending"), total(due, "nba_triggers_due")) == (2, 2)

        assert await worker.round() == 2
        fired = await scrape(client)
        trigger = {"trigger": "cart_abandonment"}
        assert delta(before, fired, "nba_triggers_fired_total", outcome="decided", **trigger) == 1
        assert delta(before, fired, "nba_triggers_fired_total", outcome="dropped_condition", **trigger) == 1
        cart = {"placement": "email.cart_recovery", "source": "trigger", "fallback": "false"}
        assert delta(before, fired, "nba_decisions_total", action="cart_email", **cart) == 1
        timed = {"placement": "email.cart_recovery", "source": "trigger"}
        assert delta(before, fired, "nba_decision_duration_seconds_count", **timed) == 1
        assert (total(fired, "nba_triggers_pending"), total(fired, "nba_outbox_due")) == (0, 1)

        live = services.catalogues.live
        delivering = DeliveryWorker(services.store.outbox(), lambda: live.destinations, clock=clock)
        try:
            assert await delivering.round() == 1
        finally:
            await delivering.aclose()
        delivered = await scrape(client)
    assert len(receiver.requests) == 1
    platform = {"destination": "platform"}
    assert delta(before, delivered, "nba_webhook_deliveries_total", result="delivered", **platform) == 1
    assert delta(before, delivered, "nba_webhook_deliveries_total", result="dead", **platform) == 0
    assert delta(before, delivered, "nba_webhook_delivery_duration_seconds_count", **platform) == 1
    assert (total(delivered, "nba_outbox_due"), total(delivered, "nba_dead_letters")) == (0, 0)


async def test_a_store_that_does_not_answer_leaves_the_backlogs_out_of_a_scrape(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from feature_store.monitoring import MonitoringStore

    async def hangs(*_: object) -> None:
        await asyncio.sleep(10)

    async with make_client(policies=CATALOGUE, watch=False) as client:
        monkeypatch.setattr(MonitoringStore, "backlogs", hangs)
        started = time.monotonic()
        samples = await scrape(client)
        elapsed = time.monotonic() - started
    assert elapsed < 2, elapsed  # bounded by the scrape's store timeout (0.25 s), far below 10 s
    assert total(samples, "nba_scrape_store_success") == 0
    assert not [name for name, _ in samples if name in ("nba_triggers_due", "nba_learner_lag")]
    assert total(samples, "nba_decisions_total") >= 0  # the counters are still there


async def test_a_fallback_and_a_store_error_are_counted(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feature_store import ProfileStore, StoreUnavailable

    async def unavailable(*_: object, **__: object) -> None:
        raise StoreUnavailable("the profile store is unreachable: test")

    async with make_client(policies=CATALOGUE, watch=False) as client:
        before = await scrape(client)
        # Below the timing wrapper, so that it sees the failure as the store's.
        monkeypatch.setattr(ProfileStore, "_apply_and_read", unavailable)
        answer = await decide(client, "c-1")
        monkeypatch.undo()
        after = await scrape(client)
    assert answer["fallback"] is True
    fallback = {"placement": "web.product_page", "source": "web", "fallback": "true", "group": "none"}
    assert delta(before, after, "nba_decisions_total", action="generic_banner", **fallback) == 1
    assert delta(before, after, "nba_store_errors_total", operation="apply_and_read") == 1
    assert delta(before, after, "nba_funnel_dropouts_total") == 0


async def test_metrics_are_open_unless_a_metrics_key_is_set(make_client: AppFactory) -> None:
    async with make_client() as client:
        assert (await client.get("/metrics")).status_code == 200
    async with make_client(metrics_key="scrape-me") as client:
        r = await client.get("/metrics")
        assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
        assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
        await scrape(client, Authorization="Bearer scrape-me")
    keys = "admin-key-0123:admin,web-key-0123:web"
    async with make_client(api_keys=keys, metrics_key="scrape-me") as client:
        await scrape(client, Authorization="Bearer scrape-me")
        await scrape(client, Authorization="Bearer admin-key-0123")
        assert (
            await client.get("/metrics", headers={"Authorization": "Bearer web-key-0123"})
        ).status_code == 401
    async with make_client(api_keys=keys) as client:  # keys for the API, none for metrics: open
        await scrape(client)


# The dashboard's samples ---------------------------------------------------------------------------------


async def test_one_sample_per_slot_whichever_worker_takes_it_and_the_last_15_minutes_are_served(
    redis_url: str, raw_redis: redis.Redis, clock: Clock, tmp_path: Path
) -> None:
    clock.now = 1_800_000_000.0  # a slot boundary
    async with service(redis_url, clock, CATALOGUE) as (client, services, _):
        one, other = dashboard_data.Sampler(services), dashboard_data.Sampler(services)  # two workers
        assert await one.tick() is True
        assert await other.tick() is False  # the same 10-s slot: already written
        clock.advance(9.9)
        assert await other.tick() is False
        for customer in ("c-1", "c-2", "c-3"):
            await decide(client, customer)
        clock.advance(0.1)
        assert await other.tick() is True

        r = await client.get("/v1/admin/dashboard/data")
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["interval_s"] == 10
        first, second = data["samples"]
        assert (first["t"], second["t"]) == (1_800_000_000.0, 1_800_000_010.0)
        assert first["instance"] == second["instance"] == dashboard_data.instance()  # one set of counters
        assert second["decisions"]["total"] - first["decisions"]["total"] == 3
        by_action = second["decisions"]["by_action"]
        assert by_action["generic_banner"] - first["decisions"]["by_action"].get("generic_banner", 0) == 3
        duration = second["decision_duration"]
        assert duration["le"] == [float(b) for b in metrics.BUCKETS]
        assert duration["count"] - first["decision_duration"]["count"] == 3
        assert duration["counts"] == sorted(duration["counts"])  # cumulative
        assert duration["counts"][-1] <= duration["count"]
        for key in ("fallback", "by_group"):
            assert key in second["decisions"]
        assert second["dropouts"]["ineligible"] - first["dropouts"].get("ineligible", 0) == 3
        assert second["triggers"] == {"pending": 0, "due": 0}
        assert (second["dead_letters"], second["outbox_due"]) == (0, 0)
        assert second["learner_lag"] == {"decisions": 3, "outcomes": 0}
        assert second["model"] == {"version": "prior", "age_s": None, "actions": {}}
        assert set(second["deliveries"]) == {"delivered", "retry", "dead"}

        # Past 15 minutes, a sample is no longer served; at most KEEP are kept in Redis.
        clock.advance(15 * 60 - 5)
        assert await one.tick() is True
        assert [s["t"] for s in (await client.get("/v1/admin/dashboard/data")).json()["samples"]] == [
            1_800_000_010.0,
            1_800_000_905.0,
        ]
        for _ in range(dashboard_data.KEEP):
            clock.advance(dashboard_data.INTERVAL_S)
            assert await one.tick() is True
        assert raw_redis.llen(store_keys.DASHBOARD_SAMPLES) == dashboard_data.KEEP
        served = (await client.get("/v1/admin/dashboard/data")).json()["samples"]
        assert len(served) == dashboard_data.WINDOW_S // dashboard_data.INTERVAL_S  # 90
        assert [s["t"] for s in served] == sorted(s["t"] for s in served)  # oldest first


async def test_a_published_model_has_an_age(
    make_client: AppFactory, raw_redis: redis.Redis, clock: Clock
) -> None:
    from models.snapshot import Snapshot

    published_ms = int((clock.now - 42) * 1000)
    raw_redis.set(store_keys.MODEL, Snapshot(version="m-7", published_ms=published_ms).to_json())
    raw_redis.set(store_keys.MODEL_VERSION, "m-7")
    async with make_client(policies=CATALOGUE) as client:  # watch: the models load at start
        samples = await scrape(client)
        ready = (await client.get("/readyz")).json()
    assert samples[("nba_model_snapshot_info", frozenset({("version", "m-7")}))] == 1
    assert total(samples, "nba_model_snapshot_age_seconds") == pytest.approx(42, abs=0.01)
    assert ready == {"status": "ready", "checks": {"store": "ok", "catalogue": "test-1", "models": "m-7"}}


async def test_the_dashboard_data_needs_an_admin_key(make_client: AppFactory) -> None:
    async with make_client(api_keys="admin-key-0123:admin,web-key-0123:web") as client:
        assert (await client.get("/v1/admin/dashboard/data")).status_code == 401
        web = {"Authorization": "Bearer web-key-0123"}
        assert (await client.get("/v1/admin/dashboard/data", headers=web)).status_code == 403
        admin = {"Authorization": "Bearer admin-key-0123"}
        assert (await client.get("/v1/admin/dashboard/data", headers=admin)).status_code == 200


# Health --------------------------------------------------------------------------------------------------


async def test_readiness_names_what_is_missing(make_client: AppFactory) -> None:
    async with make_client(policies=CATALOGUE) as client:
        r = await client.get("/readyz")
        assert r.json() == {
            "status": "ready",
            "checks": {"store": "ok", "catalogue": "test-1", "models": "prior"},
        }
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: the store is away from the start
    async with make_client(policies=CATALOGUE, redis_url=nowhere) as client:
        assert (await client.get("/livez")).json() == {"status": "alive"}
        r = await client.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["error"] == "not_ready"
        assert body["detail"].startswith("store: ")
        assert "models: not loaded from the store yet" in body["detail"]


# Several workers -----------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _multiproc_dir(pid: int) -> Path | None:
    """The metrics folder nba serve gave its workers, read from a worker's environment."""
    for child in _children(pid):
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(entry.split(b"=", 1)[1].decode())
    return None


def _decisions_per_process(folder: Path) -> dict[str, float]:
    """From each worker's own file: how many decisions that worker made."""
    out = {}
    for path in sorted(folder.glob("counter_*.db")):
        found = MultiProcessCollector.merge([str(path)], accumulate=False)  # type: ignore[no-untyped-call]
        out[path.stem] = sum(
            s.value
            for m in found
            if m.name == "nba_decisions"
            for s in m.samples
            if s.name.endswith("_total")
        )
    return out


def _decide(base: str, i: int) -> Mapping[str, Any]:
    # A client per call: a new connection each time, so that either worker may accept it.
    body = {"customer_id": f"c-{i}", "placement": "web.home", "event": {"type": "page_view"}}
    r = httpx.post(f"{base}/v1/decide", json=body, timeout=10)
    assert r.status_code == 200, r.text
    answer: Mapping[str, Any] = r.json()
    return answer


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the workers from /proc (Linux)")
def test_with_two_workers_a_scrape_of_either_counts_every_decision() -> None:
    answers: list[Mapping[str, Any]] = []
    with running_service("--workers", "2") as service:
        base = service.base_url
        folder = _multiproc_dir(service.pid)
        assert folder is not None, "nba serve gives its workers a metrics folder"
        assert folder.is_dir()
        with ThreadPoolExecutor(max_workers=16) as pool:
            # Concurrent calls on fresh connections land on both workers; go on until each has made some
            # (a bound on the load, not a retry of the check).
            for _ in range(40):
                answers += pool.map(lambda i: _decide(base, i), range(len(answers), len(answers) + 32))
                per_process = _decisions_per_process(folder)
                if len([n for n in per_process.values() if n > 0]) >= 2:
                    break
        made = len(answers)
        # A fallback (the machine busy) is a decision too; only its event may not have been applied.
        applied = sum(answer["event"]["accepted"] for answer in answers if answer["event"] is not None)
        per_process = _decisions_per_process(folder)
        assert len([n for n in per_process.values() if n > 0]) >= 2, per_process
        assert sum(per_process.values()) == made
        # Whichever worker answers the scrape (each a new connection), it counts every decision.
        for _ in range(10):
            samples = parse(httpx.get(f"{base}/metrics", timeout=10).text)
            assert total(samples, "nba_decisions_total") == made
            assert total(samples, "nba_decision_duration_seconds_count", placement="web.home") == made
            assert total(samples, "nba_events_total", result="accepted") == applied
            assert total(samples, "nba_http_request_duration_seconds_count", route="/v1/decide") == made
    assert not folder.exists(), "nba serve removes the metrics folder it made"
