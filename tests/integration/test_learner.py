"""The learner on a real Redis, fed by the real app: late and repeated outcomes, purchase attribution,
windows that close as zeros, restarts that lose and repeat nothing, the one-learner lock, and a click
that changes what every API instance serves.

The learner is driven by hand (``step``, ``publish_if_due``) on the tests' clock, so that what it has
seen is exact; only the tests about its loop run ``Learner.run`` as a task. The fixture catalogue
(tests/fixtures/catalogue) serves generic_banner on web.product_page, or proactive_chat after two FAQ
views; the web channel allows 3 contacts per 30m, so each decision here is for a customer of its own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import structlog

from app.cli import _learn_until
from feature_store import ProfileStore, StoreUnavailable
from feature_store.features import feature_names
from feature_store.keys import (
    DECISION_LOG,
    LEARNER_LOCK,
    LEARNER_READ,
    MODEL,
    MODEL_VERSION,
    OUTCOME_LOG,
    PENDING,
    REWARDS,
)
from feature_store.learning import GROUP
from feature_store.profile import iso
from models import learner as learner_module
from models.learner import Learner
from models.snapshot import Snapshot
from policies import holdout
from policies.catalogue import Catalogue, load
from tests.conftest import AppFactory, Clock

CATALOGUE = Path(__file__).parents[1] / "fixtures" / "catalogue"
SEED = "test-seed"
ROOMY = 5000  # a decision budget (ms) that no test machine exceeds
PAGE = "web.product_page"
PLACEMENT_LINE = "web.product_page: {channel: web, limit: 1, fallback: [generic_banner]}"
CHAT_RULE = '    rule: "profile.faq_view_30m >= 2 and profile.orders == 0"\n    value: 5\n'
BANNER = "  - id: generic_banner\n    channel: web\n"


def catalogue_copy(
    tmp_path: Path,
    *,
    reward: str = "click",
    attribution: str = "30m",
    share: float = 0.0,
    chat_always: bool = False,
    banner_holdout: float = 0.0,
) -> Path:
    """The fixture catalogue with web.product_page's reward and attribution set, another holdout share,
    (``chat_always``) proactive_chat as eligible and as valuable as generic_banner, or a holdout of
    generic_banner's own."""
    folder = tmp_path / "catalogue"
    shutil.copytree(CATALOGUE, folder)
    file = folder / "catalogue.yaml"
    text = file.read_text()
    edits = {
        PLACEMENT_LINE: PLACEMENT_LINE.replace("}", f", reward: {reward}, attribution: {attribution}}}"),
        f'holdout: {{share: 0.0, seed: "{SEED}"}}': f'holdout: {{share: {share}, seed: "{SEED}"}}',
    }
    if chat_always:
        edits[CHAT_RULE] = "    value: 1\n"
    if banner_holdout:
        edits[BANNER] = f"{BANNER}    holdout: {banner_holdout}\n"
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    file.write_text(text)
    return folder


def learner_for(store: ProfileStore, folder: Path, clock: Clock, **options: Any) -> Learner:
    """A learner that closes windows exactly at their end (no grace), unless told otherwise."""
    catalogue: Catalogue = load(folder, feature_names())
    defaults = {"publish_every_s": 0, "close_grace_ms": 0}
    return Learner(store.learning(), lambda: catalogue, clock=clock, **{**defaults, **options})


async def started(learner: Learner) -> Learner:
    """What ``Learner.run`` does before its first round (without the lock)."""
    await learner.store.ensure_groups()
    await learner.restore()
    return learner


async def settle(learner: Learner) -> None:
    """Step until there is nothing left to do; a learner that never goes idle fails the test."""
    async with asyncio.timeout(10):
        for _ in range(20):
            if not await learner.step():
                return
    raise AssertionError("the learner still had work after 20 rounds")


async def until(condition: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll a background loop's effect, at most ``seconds``: a bound, not a performance assertion."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.02)


def published(raw_redis: redis.Redis, version: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(raw_redis.get(MODEL_VERSION) == version)

    return check


async def decide(api: httpx.AsyncClient, customer: str, **body: Any) -> dict[str, Any]:
    r = await api.post("/v1/decide", json={"customer_id": customer, "placement": PAGE, **body})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    assert answer["fallback"] is False
    return answer


def served(answer: dict[str, Any]) -> str:
    [action] = answer["actions"]
    return str(action["action_id"])


async def report(
    api: httpx.AsyncClient, answer: dict[str, Any], kind: str = "click", action: str | None = None
) -> dict[str, Any]:
    body = {"decision_id": answer["decision_id"], "action_id": action or served(answer), "type": kind}
    r = await api.post("/v1/outcomes", json=body)
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


async def faq_views(api: httpx.AsyncClient, customer: str) -> None:
    events = [
        {"customer_id": customer, "type": "faq_view", "properties": {"article_id": f"a{i}"}} for i in (1, 2)
    ]
    assert (await api.post("/v1/events", json={"events": events})).status_code == 202


async def purchase(api: httpx.AsyncClient, customer: str, revenue: float, order: str) -> None:
    event = {
        "customer_id": customer,
        "type": "purchase",
        "properties": {"revenue": revenue, "order_id": order},
    }
    assert (await api.post("/v1/events", json=event)).status_code == 202


def counts(raw_redis: redis.Redis) -> dict[str, tuple[int, int]]:
    """The published snapshot: (observations, positives) per action."""
    text = raw_redis.get(MODEL)
    assert isinstance(text, str)
    return {a: (m.observations, m.positives) for a, m in Snapshot.from_json(text).actions.items()}


def rewards(raw_redis: redis.Redis) -> list[dict[str, str]]:
    entries: list[tuple[str, dict[str, str]]] = raw_redis.xrange(REWARDS)  # type: ignore[assignment]
    return [fields for _, fields in entries]


def unpublished(raw_redis: redis.Redis, stream: str) -> int:
    """Entries the learner was handed and has not published as learned (a restart hands them out again).
    No entry ever waits in the group's pending list: the learner reads without acknowledgements."""
    assert int(raw_redis.xpending(stream, GROUP)["pending"]) == 0
    position = raw_redis.hget(LEARNER_READ, stream) or "0"
    groups: list[dict[str, Any]] = raw_redis.xinfo_groups(stream)  # type: ignore[assignment]
    delivered = next(str(g["last-delivered-id"]) for g in groups if g["name"] == GROUP)
    return len(raw_redis.xrange(stream, f"({position}", delivered))


# Late and repeated outcomes ----------------------------------------------------------------------------


async def test_an_outcome_after_its_window_closed_changes_nothing(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    folder = catalogue_copy(tmp_path, attribution="2s")
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        learner = await started(learner_for(store, folder, clock))
        answer = await decide(api, "c-1")
        await settle(learner)
        clock.advance(3)
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"
        assert counts(raw_redis) == {"generic_banner": (1, 0)}
        model = raw_redis.get(MODEL)

        assert (await report(api, answer))["accepted"] == 1  # the service takes it: the decision is kept
        await settle(learner)
        assert await learner.publish_if_due(force=True) is None  # the position read to, no new model
        assert (raw_redis.get(MODEL), raw_redis.get(MODEL_VERSION)) == (model, "m-1")
        [zero] = rewards(raw_redis)
        assert (zero["decision_id"], zero["positive"], zero["source"]) == (answer["decision_id"], "0", "none")
        assert unpublished(raw_redis, OUTCOME_LOG) == 0
        assert raw_redis.zcard(PENDING) == 0


async def test_an_outcome_after_its_window_counts_for_nothing_even_before_the_learner_closed_it(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    """A learner that lags (or restarts) must reach what a prompt one reaches: the window decides."""
    folder = catalogue_copy(tmp_path, attribution="2s")
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        learner = await started(learner_for(store, folder, clock))
        late, on_time = await decide(api, "c-1"), await decide(api, "c-2")
        clock.advance(1)
        await report(api, on_time)
        clock.advance(2)  # both windows closed; the learner has not looked yet
        await report(api, late)
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"
        assert counts(raw_redis) == {"generic_banner": (2, 1)}
        positive = {r["decision_id"]: r["positive"] for r in rewards(raw_redis)}
        assert positive == {late["decision_id"]: "0", on_time["decision_id"]: "1"}


async def test_a_repeated_outcome_is_learned_once(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    folder = catalogue_copy(tmp_path)  # reward: click (a conversion is a click too)
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        learner = await started(learner_for(store, folder, clock))
        answer = await decide(api, "c-1")
        assert await report(api, answer) == {"accepted": 1, "duplicates": 0, "errors": []}
        assert await report(api, answer) == {"accepted": 0, "duplicates": 1, "errors": []}
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"
        assert counts(raw_redis) == {"generic_banner": (1, 1)}

        # Another positive outcome for the same action, and the first one delivered to the log again.
        assert (await report(api, answer, "conversion"))["accepted"] == 1
        [(_, first), _] = raw_redis.xrange(OUTCOME_LOG)  # type: ignore[misc]
        raw_redis.xadd(OUTCOME_LOG, first)  # type: ignore[arg-type]
        await settle(learner)
        assert await learner.publish_if_due(force=True) is None
        clock.advance(31 * 60)  # and its window closes
        await settle(learner)
        assert await learner.publish_if_due(force=True) is None
        assert counts(raw_redis) == {"generic_banner": (1, 1)}
        [reward] = rewards(raw_redis)
        assert (reward["decision_id"], reward["positive"], reward["source"]) == (
            answer["decision_id"],
            "1",
            "outcome",
        )
        assert unpublished(raw_redis, OUTCOME_LOG) == 0


# Purchases and closing windows -------------------------------------------------------------------------


def customers(group: str, n: int, share: float = 0.5) -> list[str]:
    """The first ``n`` customer ids that the holdout puts in ``group`` (fixed by the seed)."""
    return [c for c in (f"c-{i}" for i in range(100)) if holdout.group(SEED, share, f"c:{c}") == group][:n]


async def test_a_purchase_in_the_window_makes_the_served_action_positive_and_control_is_measured(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    folder = catalogue_copy(tmp_path, reward="conversion", attribution="10m", share=0.5)
    buyer, late_buyer = customers(holdout.TREATMENT, 2)
    [control] = customers(holdout.CONTROL, 1)
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        learner = await started(learner_for(store, folder, clock))
        bought = await decide(api, buyer)
        bought_late = await decide(api, late_buyer)
        held = await decide(api, control)
        assert (bought["group"], bought_late["group"], held["group"]) == ("treatment", "treatment", "control")
        assert held["actions"] == []  # generic_banner is not exempt: control is only measured
        await report(api, bought)  # a click earns nothing under reward: conversion

        clock.advance(5 * 60)
        await purchase(api, buyer, 30.0, "o-1")
        await purchase(api, control, 30.0, "o-2")
        await settle(learner)
        # The served actions' negatives are learned as the decisions are read; nothing is joined yet.
        assert await learner.publish_if_due(force=True) == "m-1"
        assert counts(raw_redis) == {"generic_banner": (2, 0)}
        assert raw_redis.zcard(PENDING) == 3

        clock.advance(15 * 60)
        await purchase(api, late_buyer, 30.0, "o-3")  # 20 minutes after: outside its 10-minute window
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-2"

    joined = {(r["decision_id"], r["action_id"], r["counterfactual"]): r for r in rewards(raw_redis)}
    assert set(joined) == {
        (bought["decision_id"], "generic_banner", "0"),
        (bought_late["decision_id"], "generic_banner", "0"),
        (held["decision_id"], "generic_banner", "1"),
    }
    earned = {key[0]: (r["positive"], r["source"], float(r["value"])) for key, r in joined.items()}
    assert earned == {
        bought["decision_id"]: ("1", "purchase", 1.0),
        bought_late["decision_id"]: ("0", "none", 0.0),
        held["decision_id"]: ("1", "purchase", 1.0),
    }
    assert {key[0]: r["group"] for key, r in joined.items()} == {
        bought["decision_id"]: "treatment",
        bought_late["decision_id"]: "treatment",
        held["decision_id"]: "control",
    }
    # The control customer's counterfactual is joined, never learned: generic_banner saw two decisions.
    assert counts(raw_redis) == {"generic_banner": (2, 1)}
    assert raw_redis.zcard(PENDING) == 0


async def test_a_customer_held_out_of_an_action_is_measured_and_never_learned_from(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    """generic_banner with a holdout of its own: a treatment customer in it is served nothing, and their
    decision logs that they would have been served it. The learner joins their purchase to it as it does
    to what was served, and learns nothing from it."""
    folder = catalogue_copy(tmp_path, reward="conversion", attribution="10m", banner_holdout=0.5)
    ids = [f"c-{i}" for i in range(100)]
    held = [c for c in ids if holdout.held_out(SEED, 0.5, "generic_banner", f"c:{c}")][:2]
    [shown] = [c for c in ids if not holdout.held_out(SEED, 0.5, "generic_banner", f"c:{c}")][:1]
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        learner = await started(learner_for(store, folder, clock))
        served_it = await decide(api, shown)
        withheld = [await decide(api, c) for c in held]
        assert served(served_it) == "generic_banner"
        assert [(a["group"], a["actions"]) for a in withheld] == [("treatment", [])] * 2
        clock.advance(5 * 60)
        await purchase(api, shown, 30.0, "o-1")
        await purchase(api, held[0], 30.0, "o-2")  # the other held-out customer buys nothing
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"
        assert raw_redis.zcard(PENDING) == 3
        clock.advance(15 * 60)
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-2"

    entries: list[tuple[str, dict[str, str]]] = raw_redis.xrange(DECISION_LOG)  # type: ignore[assignment]
    logged = {e["decision_id"]: e for _, e in entries}
    assert "holdout_counterfactual" not in logged[served_it["decision_id"]]  # as before: nothing withheld
    for answer in withheld:
        [would] = json.loads(logged[answer["decision_id"]]["holdout_counterfactual"])
        assert (would["action_id"], would["probability"]) == ("generic_banner", 1.0)
        assert json.loads(logged[answer["decision_id"]]["counterfactual"]) == []
    joined = {(r["decision_id"], r["counterfactual"]): r["positive"] for r in rewards(raw_redis)}
    assert joined == {
        (served_it["decision_id"], "0"): "1",
        (withheld[0]["decision_id"], "holdout"): "1",
        (withheld[1]["decision_id"], "holdout"): "0",
    }
    assert {r["group"] for r in rewards(raw_redis)} == {"treatment"}
    # Learned from what was shown only: one negative, and its positive on top.
    assert counts(raw_redis) == {"generic_banner": (1, 1)}
    assert raw_redis.zcard(PENDING) == 0


async def test_a_value_reward_earns_the_revenue_in_the_window(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    folder = catalogue_copy(tmp_path, reward="value", attribution="10m")
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        learner = await started(learner_for(store, folder, clock))
        answer = await decide(api, "c-1")
        clock.advance(60)
        await purchase(api, "c-1", 19.99, "o-1")
        await purchase(api, "c-1", 5.01, "o-2")
        clock.advance(10 * 60)
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"
    [reward] = rewards(raw_redis)
    assert (reward["decision_id"], reward["positive"], reward["source"]) == (
        answer["decision_id"],
        "1",
        "purchase",
    )
    assert float(reward["value"]) == 25.0
    snapshot = Snapshot.from_json(str(raw_redis.get(MODEL)))
    assert snapshot.actions["generic_banner"].reward_sum == 25.0


async def test_a_window_that_closes_without_a_reward_is_learned_as_a_zero(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    folder = catalogue_copy(tmp_path, attribution="2s")
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        learner = await started(learner_for(store, folder, clock))
        await report(api, await decide(api, "c-1"))
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"
        assert counts(raw_redis) == {"generic_banner": (1, 1)}

        quiet = await decide(api, "c-2")
        await settle(learner)
        # Its negative is learned when the decision is read (a fake negative), before the window closes.
        assert await learner.publish_if_due(force=True) == "m-2"
        assert counts(raw_redis) == {"generic_banner": (2, 1)}  # observations +1, positives +0
        assert rewards(raw_redis)[-1]["decision_id"] != quiet["decision_id"]  # not joined yet
        clock.advance(2.001)
        await settle(learner)
        assert await learner.publish_if_due(force=True) is None  # joined as a zero: nothing more to learn
        assert counts(raw_redis) == {"generic_banner": (2, 1)}
    zero = rewards(raw_redis)[-1]
    assert (zero["decision_id"], zero["positive"], zero["value"], zero["source"]) == (
        quiet["decision_id"],
        "0",
        "0.0",
        "none",
    )
    assert raw_redis.zcard(PENDING) == 0


async def test_a_click_read_after_its_window_closed_mid_round_still_counts(
    make_client: AppFactory,
    store: ProfileStore,
    clock: Clock,
    raw_redis: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A click reported just before the close, while the learner is between reading the outcomes and
    closing the windows: the round must not close the window before the next round reads the click."""
    folder = catalogue_copy(tmp_path, attribution="2s")
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        learner = await started(learner_for(store, folder, clock))
        answer = await decide(api, "c-1")
        await settle(learner)
        read = learner.store.read
        late_in_the_round: list[str] = []

        async def read_then_click(stream: str, count: int) -> list[tuple[str, dict[str, str]]]:
            entries = await read(stream, count)
            if stream == OUTCOME_LOG and not late_in_the_round:
                clock.advance(1.9)
                await report(api, answer)  # within the window, just after the learner looked
                late_in_the_round.append(answer["decision_id"])
                clock.advance(0.2)  # and the window closes before the round goes on
            return entries

        monkeypatch.setattr(learner.store, "read", read_then_click)
        await settle(learner)  # the round in which it happens
        assert late_in_the_round
        await settle(learner)  # and the rounds after it
        assert await learner.publish_if_due(force=True) == "m-1"
        assert counts(raw_redis) == {"generic_banner": (1, 1)}
        [reward] = rewards(raw_redis)
        assert (reward["positive"], reward["source"]) == ("1", "outcome")


# Restarts and the lock ---------------------------------------------------------------------------------


async def test_a_learner_restarted_mid_stream_loses_and_repeats_nothing(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    folder = catalogue_copy(tmp_path)  # reward click, attribution 30m
    clicked: set[str] = set()
    expected = {"proactive_chat": [0, 0], "generic_banner": [0, 0]}

    async def produce(api: httpx.AsyncClient, numbers: range) -> None:
        """Decisions for customers ``c-<n>`` (the even ones read the FAQ first), clicks on every third."""
        for n in numbers:
            if n % 2 == 0:
                await faq_views(api, f"c-{n}")
            answer = await decide(api, f"c-{n}")
            action = served(answer)
            assert action == ("proactive_chat" if n % 2 == 0 else "generic_banner")
            expected[action][0] += 1
            if n % 3 == 0:
                await report(api, answer)
                clicked.add(answer["decision_id"])
                expected[action][1] += 1

    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        first = await started(learner_for(store, folder, clock))
        await produce(api, range(20))
        assert await first.step()
        assert await first.publish_if_due(force=True) == "m-1"
        await produce(api, range(20, 40))
        assert await first.step()  # learns the new clicks
        clock.advance(31 * 60)
        assert await first.step()  # and every window closing as a zero
        del first  # gone before it published any of that
        assert unpublished(raw_redis, DECISION_LOG) == 20  # what the next learner is handed again

        second = await started(learner_for(store, folder, clock))
        assert second._version == 1
        await settle(second)
        assert await second.publish_if_due(force=True) == "m-2"

    assert counts(raw_redis) == {a: (n, p) for a, (n, p) in expected.items()}
    assert expected == {"proactive_chat": [20, 7], "generic_banner": [20, 7]}
    joined = rewards(raw_redis)
    assert len(joined) == 40
    assert len({(r["decision_id"], r["action_id"]) for r in joined}) == 40  # each one once
    assert {r["decision_id"] for r in joined if r["positive"] == "1"} == clicked
    assert raw_redis.zcard(PENDING) == 0
    assert unpublished(raw_redis, DECISION_LOG) == unpublished(raw_redis, OUTCOME_LOG) == 0


async def test_a_learner_takes_over_what_an_acknowledging_learner_left_pending(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    """A deployment upgraded from a learner that acknowledged entries at each publish: the entries it had
    read and not acknowledged are handed out again, once, and its pending list goes."""
    folder = catalogue_copy(tmp_path)
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        await store.learning().ensure_groups()
        for n in range(3):
            await decide(api, f"c-{n}")
        # The old learner: read all three, acknowledged (published) the first only.
        [(_, entries)] = raw_redis.xreadgroup(GROUP, "learner", {DECISION_LOG: ">"})  # type: ignore[misc]
        raw_redis.xack(DECISION_LOG, GROUP, entries[0][0])
        assert raw_redis.xpending(DECISION_LOG, GROUP)["pending"] == 2
        assert raw_redis.exists(LEARNER_READ) == 0

        learner = await started(learner_for(store, folder, clock))
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"
        assert counts(raw_redis) == {"generic_banner": (2, 0)}  # the two left pending, and only those
        assert unpublished(raw_redis, DECISION_LOG) == 0
        assert raw_redis.hget(LEARNER_READ, DECISION_LOG) == entries[2][0]

        again = await started(learner_for(store, folder, clock))  # a restart: nothing is handed out again
        assert not await again.step()


async def test_a_second_learner_waits_while_the_first_holds_the_lock(
    make_client: AppFactory,
    store: ProfileStore,
    clock: Clock,
    raw_redis: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = catalogue_copy(tmp_path)
    first = learner_for(store, folder, clock)
    second = learner_for(store, folder, clock)
    publishes: list[str] = []
    original = second.store.publish

    async def spy(snapshot_json: str | None, version: str, *rest: Any) -> None:
        publishes.append(version)
        await original(snapshot_json, version, *rest)

    monkeypatch.setattr(second.store, "publish", spy)
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        await report(api, await decide(api, "c-1"))
        running = asyncio.create_task(first.run(stop_first, idle_s=0.02))
        try:
            await until(published(raw_redis, "m-1"), 2, "the first learner publishes")
            token = raw_redis.get(LEARNER_LOCK)
            waiting = asyncio.create_task(second.run(stop_second))
            await report(api, await decide(api, "c-2"))  # work for whichever learner is learning
            await until(published(raw_redis, "m-2"), 2, "the first learns on")
            await asyncio.sleep(0.2)
            stop_second.set()
            await asyncio.wait_for(waiting, 2)
            assert publishes == []
            assert second._version == 0  # it never even restored the model
            assert second._actions == {}
            assert raw_redis.get(LEARNER_LOCK) == token
        finally:
            stop_first.set()
            await asyncio.wait_for(running, 2)
    assert raw_redis.get(LEARNER_LOCK) is None  # released on the way out
    assert counts(raw_redis) == {"generic_banner": (2, 2)}


async def test_a_learner_that_lost_its_lock_without_noticing_publishes_nothing(
    make_client: AppFactory,
    store: ProfileStore,
    clock: Clock,
    raw_redis: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock expired while the learner was stopped or starved after its last renewal, and another
    learner took it: its next publish (here the last one, on the way out) must not land, or the two
    would each undo the other's learning."""
    folder = catalogue_copy(tmp_path)
    # Publishes only when stopped (never due on this pace), and rests long between rounds once idle.
    learner = learner_for(store, folder, clock, publish_every_s=3600, pace=lambda: 0.0)
    stop = asyncio.Event()
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        await report(api, await decide(api, "c-1"))
        running = asyncio.create_task(learner.run(stop, idle_s=3600))

        async def read() -> bool:
            return bool(learner._read)

        try:
            await until(read, 2, "the learner reads the decision")
            await asyncio.sleep(0.3)  # and goes idle, past its renewal
            with structlog.testing.capture_logs() as logged:
                # A fresh logger: the module's own cached its configuration at first use, in an earlier test.
                monkeypatch.setattr(learner_module, "log", structlog.get_logger("nba.learner"))
                # Another learner holds the lock now; this one is told to stop before it renews.
                raw_redis.set(LEARNER_LOCK, "another learner", px=15_000)
                stop.set()
                await asyncio.wait_for(running, 2)
        finally:
            stop.set()
            await asyncio.wait_for(running, 2)
    assert [e.get("at") for e in logged if e["event"] == "learner_lost_lock"] == ["publish"]
    assert raw_redis.get(MODEL_VERSION) is None
    assert raw_redis.get(MODEL) is None
    assert raw_redis.hgetall(LEARNER_READ) == {}  # the decision is still to be learned, by the other
    assert raw_redis.xlen(REWARDS) == 0
    assert raw_redis.get(LEARNER_LOCK) == "another learner"  # and its lock is left alone
    assert learner.token is None


async def test_a_store_outage_mid_run_loses_nothing_learned_before_it(
    make_client: AppFactory,
    store: ProfileStore,
    clock: Clock,
    raw_redis: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``nba learn`` runs the learner again when the store went away: what it learned and could not
    publish must be learned again, not published as learned without being in the model."""
    folder = catalogue_copy(tmp_path)
    learner = learner_for(store, folder, clock)
    publish = learner.store.publish
    outages: list[str] = []

    async def fails_once(snapshot_json: str | None, version: str, *rest: Any) -> None:
        if version == "m-2" and not outages:
            outages.append(version)
            raise StoreUnavailable("the store went away")
        await publish(snapshot_json, version, *rest)

    monkeypatch.setattr(learner.store, "publish", fails_once)
    stop = asyncio.Event()
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        await report(api, await decide(api, "c-1"))
        running = asyncio.create_task(_learn_until(learner, stop))
        try:
            await until(published(raw_redis, "m-1"), 2, "the first publish")
            await report(api, await decide(api, "c-2"))
            # _learn_until waits a second before running the learner again
            await until(published(raw_redis, "m-2"), 3, "a publish after the outage")
        finally:
            stop.set()
            await asyncio.wait_for(running, 2)
    assert outages == ["m-2"]
    assert counts(raw_redis) == {"generic_banner": (2, 2)}
    assert len(rewards(raw_redis)) == 2
    assert raw_redis.zcard(PENDING) == 0  # both learned as positives
    assert unpublished(raw_redis, DECISION_LOG) == unpublished(raw_redis, OUTCOME_LOG) == 0


# What the API instances see ----------------------------------------------------------------------------


async def test_two_api_instances_see_the_same_model_after_a_publish(
    make_client: AppFactory, store: ProfileStore, clock: Clock, tmp_path: Path
) -> None:
    folder = catalogue_copy(tmp_path)
    settings = {"policies": folder, "decision_budget_ms": ROOMY, "model_refresh_s": 0.05}
    async with make_client(**settings) as one, make_client(**settings) as two:
        learner = await started(learner_for(store, folder, clock))
        assert (await decide(two, "c-0"))["model_version"] == "prior"
        await report(two, await decide(one, "c-1"))
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"

        async def both_see_it() -> bool:
            seen = [(await api.get("/v1/models")).json()["model_version"] for api in (one, two)]
            return seen == ["m-1", "m-1"]

        await until(both_see_it, 2, "both instances load m-1")
        assert (await decide(one, "c-2"))["model_version"] == "m-1"
        assert (await decide(two, "c-3"))["model_version"] == "m-1"


async def test_an_outcome_changes_what_is_served_within_seconds(
    make_client: AppFactory, store: ProfileStore, clock: Clock, tmp_path: Path
) -> None:
    folder = catalogue_copy(tmp_path, attribution="1s", chat_always=True)
    learner = learner_for(store, folder, clock, publish_every_s=0.2)
    stop = asyncio.Event()
    async with make_client(policies=folder, decision_budget_ms=ROOMY, model_refresh_s=0.1) as api:
        running = asyncio.create_task(learner.run(stop, idle_s=0.02))
        try:
            # Both offers on each decision: every window has both, so what is learned is exact.
            answers = [await decide(api, f"c-{n}", limit=2, explain=True) for n in range(4)]
            before = {v["action_id"]: v for v in answers[0]["explanation"] if v["status"] == "chosen"}
            assert set(before) == {"proactive_chat", "generic_banner"}
            assert before["proactive_chat"]["propensity"] == before["generic_banner"]["propensity"] == 0.05
            # A tie so far: the first draw was a coin toss, the second took the one left.
            assert sorted(v["probability"] for v in before.values()) == [0.5, 1.0]

            for answer in answers:
                await report(api, answer, action="proactive_chat")
            clock.advance(1.5)  # generic_banner's windows close without a click
            clicked_at = time.monotonic()

            async def learned() -> bool:
                report_ = (await api.get("/v1/models")).json()
                chat, banner = report_["actions"]["proactive_chat"], report_["actions"]["generic_banner"]
                counted = (chat["observations"], chat["rewards"], banner["observations"], banner["rewards"])
                if counted != (4, 4, 4, 0):
                    return False
                answer = await decide(api, f"c-after-{time.monotonic_ns()}", explain=True)
                verdicts = {v["action_id"]: v for v in answer["explanation"]}
                assert answer["model_version"] == report_["model_version"] != "prior"
                assert answer["actions"][0]["action_id"] == "proactive_chat"
                assert answer["actions"][0]["probability"] == 1.0
                assert verdicts["proactive_chat"]["propensity"] > verdicts["generic_banner"]["propensity"]
                assert verdicts["generic_banner"]["probability"] == 0.0
                return True

            await until(learned, 5 - (time.monotonic() - clicked_at), "the click is learned and served")
        finally:
            stop.set()
            await asyncio.wait_for(running, 2)


async def test_models_reports_what_each_action_learned_to_admins(
    make_client: AppFactory, store: ProfileStore, clock: Clock, tmp_path: Path
) -> None:
    folder = catalogue_copy(tmp_path)
    keys = {"k-admin": "admin", "k-web": "web"}
    admin = {"authorization": "Bearer k-admin"}
    async with make_client(
        policies=folder, api_keys=keys, decision_budget_ms=ROOMY, model_refresh_s=0.05
    ) as api:
        assert (await api.get("/v1/models")).status_code == 401
        assert (await api.get("/v1/models", headers={"authorization": "Bearer k-web"})).status_code == 403
        fresh = (await api.get("/v1/models", headers=admin)).json()
        assert (fresh["model_version"], fresh["published_at"], fresh["age_s"]) == ("prior", None, None)
        assert set(fresh["actions"]) == {"proactive_chat", "generic_banner", "service_notice", "cart_email"}
        assert all(
            a
            == {
                "observations": 0,
                "positives": 0,
                "rewards": 0,
                "reward_sum": 0.0,
                "maturity": "cold",
                "last_update": None,
            }
            for a in fresh["actions"].values()
        )

        learner = await started(learner_for(store, folder, clock))
        for n in range(3):
            r = await api.post("/v1/decide", json={"customer_id": f"c-{n}", "placement": PAGE}, headers=admin)
            assert r.status_code == 200
            if n == 0:
                click = {
                    "decision_id": r.json()["decision_id"],
                    "action_id": "generic_banner",
                    "type": "click",
                }
                assert (await api.post("/v1/outcomes", json=click, headers=admin)).status_code == 202
        clock.advance(31 * 60)
        published_ms = int(clock() * 1000)
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"
        clock.advance(10)

        async def loaded() -> bool:
            return bool((await api.get("/v1/models", headers=admin)).json()["model_version"] == "m-1")

        await until(loaded, 2, "the instance loads m-1")
        body = (await api.get("/v1/models", headers=admin)).json()
    assert body["age_s"] == pytest.approx(10.0, abs=0.01)
    assert body["published_at"] == iso(published_ms)
    banner = body["actions"]["generic_banner"]
    assert (banner["observations"], banner["rewards"], banner["reward_sum"], banner["maturity"]) == (
        3,
        1,
        1.0,
        "cold",
    )
    assert banner["last_update"] == body["published_at"]
    assert body["actions"]["cart_email"] == fresh["actions"]["cart_email"]


async def test_a_window_closes_a_little_after_its_end_so_a_late_logged_outcome_still_counts(
    store: ProfileStore, clock: Clock, tmp_path: Path, make_client: AppFactory, raw_redis: redis.Redis
) -> None:
    """A click timed inside the window but logged after its end (a slow request, clocks apart) counts,
    as long as it is logged within the grace."""
    folder = catalogue_copy(tmp_path, attribution="2s")
    learner = learner_for(store, folder, clock, close_grace_ms=2_000)
    await learner.store.ensure_groups()
    async with make_client(policies=folder) as api:
        decision = await decide(api, "c-1")
        await learner.step()  # the decision is pending
        clock.advance(2.9)  # the window ended 0.9 s ago: within the grace, so it is not closed yet
        await learner.step()
        clock.advance(-1.0)  # the click happened at 1.9 s, inside the window; its request was slow
        outcome = {"decision_id": decision["decision_id"], "action_id": "generic_banner", "type": "click"}
        assert (await api.post("/v1/outcomes", json=outcome)).status_code == 202
        clock.advance(1.0)
        await learner.step()
        await learner.publish_if_due(force=True)
    assert counts(raw_redis) == {"generic_banner": (1, 1)}
