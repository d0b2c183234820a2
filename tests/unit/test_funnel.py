"""The pure funnel: each filter and status at its edges, probabilities, holdouts. Seeded, no Redis."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from feature_store.features import feature_names, features
from feature_store.profile import ContactRecord
from models.snapshot import LinearScorer
from policies import holdout
from policies.catalogue import Catalogue, Exploration, load
from policies.exploration import SeededDraws, draw, probabilities
from policies.funnel import Situation, decide

NOW = 1_795_000_000_000
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
FIXTURE = Path(__file__).parents[1] / "fixtures" / "catalogue"


def catalogue(tmp_path: Path, text: str) -> Catalogue:
    (tmp_path / "c.yaml").write_text(text)
    return load(tmp_path, feature_names())


@pytest.fixture
def fixture_catalogue() -> Catalogue:
    return load(FIXTURE, feature_names())


def situation(
    *,
    contacts: tuple[ContactRecord, ...] = (),
    group: str | None = "treatment",
    context: dict[str, Any] | None = None,
    customer: str = "c:1",
    held_out: dict[str, bool] | None = None,
    **feature_values: Any,
) -> Situation:
    values = features(None, NOW)
    values.update(feature_values)
    return Situation(customer, values, context or {}, contacts, NOW, group, held_out or {})


def served(action: str, channel: str, ago_ms: int, kind: str = "served") -> ContactRecord:
    return ContactRecord(NOW - ago_ms, "d-x", action, channel, kind)


def statuses(c: Catalogue, placement: str, s: Situation) -> dict[str, tuple[str, str]]:
    d = decide(c, placement, s, LinearScorer(), random.Random(7))
    return {v.action_id: (v.status, v.reason) for v in d.verdicts}


def test_each_filter_gives_its_status(fixture_catalogue: Catalogue) -> None:
    s = situation(faq_view_30m=2)
    assert statuses(fixture_catalogue, "web.product_page", s)["proactive_chat"][0] == "chosen"
    assert statuses(fixture_catalogue, "web.product_page", s)["cart_email"] == (
        "ineligible",
        "not offered on web.product_page",
    )
    assert statuses(fixture_catalogue, "web.product_page", situation(faq_view_30m=1))["proactive_chat"] == (
        "ineligible",
        "rule does not hold",
    )
    cart = situation(cart_items=1)
    assert statuses(fixture_catalogue, "email.cart_recovery", cart)["cart_email"] == (
        "no_consent",
        "no email consent",
    )
    granted = situation(cart_items=1, consent={"email": True})
    assert statuses(fixture_catalogue, "email.cart_recovery", granted)["cart_email"][0] == "chosen"


@pytest.mark.parametrize(("ago_ms", "expected"), [(24 * HOUR - 1, "capped"), (24 * HOUR, "chosen")])
def test_a_channel_limit_counts_what_was_served_within_its_window(
    fixture_catalogue: Catalogue, ago_ms: int, expected: str
) -> None:
    s = situation(cart_items=1, consent={"email": True}, contacts=(served("cart_email", "email", ago_ms),))
    assert statuses(fixture_catalogue, "email.cart_recovery", s)["cart_email"][0] == expected


@pytest.mark.parametrize(("count", "expected"), [(2, "chosen"), (3, "capped")])
def test_a_limit_holds_exactly_max(fixture_catalogue: Catalogue, count: int, expected: str) -> None:
    """web: 3 per 30m; two served leave room for a third."""
    contacts = tuple(served("generic_banner", "web", i * MINUTE) for i in range(count))
    s = situation(contacts=contacts)
    status, reason = statuses(fixture_catalogue, "web.product_page", s)["generic_banner"]
    assert status == expected
    if expected == "capped":
        assert reason == "web channel limit of 3 per 30m reached"


@pytest.mark.parametrize(
    ("contacts", "expected"),
    [
        ((), ("chosen", "drawn")),
        ((served("a", "web", 59 * MINUTE),), ("capped", "action limit of 1 per 1h reached")),
        ((served("a", "web", 60 * MINUTE),), ("chosen", "drawn")),
        ((served("b", "web", MINUTE), served("a", "email", MINUTE, "dismiss")), ("chosen", "drawn")),
    ],
)
def test_an_action_limit_counts_that_actions_serves_only(
    tmp_path: Path, contacts: tuple[ContactRecord, ...], expected: tuple[str, str]
) -> None:
    c = catalogue(tmp_path, BASE + "    limits: [{max: 1, per: 1h}]\n")
    assert statuses(c, "web.home", situation(contacts=contacts))["a"] == expected


def test_the_overall_limit_counts_every_channel(fixture_catalogue: Catalogue) -> None:
    contacts = tuple(served("x", "sms", i * HOUR) for i in range(5))
    assert statuses(fixture_catalogue, "web.product_page", situation(contacts=contacts))[
        "generic_banner"
    ] == (
        "capped",
        "overall limit of 5 per 24h reached",
    )


def test_cooldown_suppression_and_conversion(fixture_catalogue: Catalogue) -> None:
    def chat(*contacts: ContactRecord) -> tuple[str, str]:
        return statuses(fixture_catalogue, "web.product_page", situation(faq_view_30m=2, contacts=contacts))[
            "proactive_chat"
        ]

    assert chat(served("proactive_chat", "web", 59 * MINUTE, "dismiss")) == (
        "suppressed",
        "dismissed within 1h",
    )
    assert chat(served("proactive_chat", "web", 61 * MINUTE, "dismiss"))[0] == "chosen"
    two = (
        served("proactive_chat", "web", 2 * DAY, "dismiss"),
        served("proactive_chat", "web", 3 * DAY, "dismiss"),
    )
    assert chat(*two) == ("suppressed", "dismissed 2 times within 7d")
    assert chat(served("proactive_chat", "web", 300 * DAY, "conversion")) == (
        "suppressed",
        "already converted",
    )


def test_control_gets_only_exempt_actions_and_logs_the_counterfactual(fixture_catalogue: Catalogue) -> None:
    s = situation(faq_view_30m=2, group="control")
    d = decide(fixture_catalogue, "web.faq", s, LinearScorer(), random.Random(3))
    assert [c.action_id for c in d.chosen] == ["service_notice"]
    assert [c.action_id for c in d.counterfactual] == ["proactive_chat", "service_notice"]
    verdicts = {v.action_id: v.status for v in d.verdicts}
    assert verdicts["proactive_chat"] == "holdout"


def test_the_served_draw_is_the_same_with_or_without_a_counterfactual(fixture_catalogue: Catalogue) -> None:
    s = situation(faq_view_30m=2, group="treatment")
    a = decide(fixture_catalogue, "web.faq", s, LinearScorer(), random.Random(11))
    b = decide(fixture_catalogue, "web.faq", s, LinearScorer(), random.Random(11))
    assert a == b


@pytest.mark.parametrize("seed", ["d-01a20795e44ebc6b544bce2bba32", 0.6394267984578837, 7, b"x"])
def test_seeded_draws_are_the_draws_of_random_seeded_alike(seed: Any) -> None:
    draws, generator = SeededDraws(seed), random.Random(seed)
    assert [draws.random() for _ in range(5)] == [generator.random() for _ in range(5)]


def test_a_skipped_draw_takes_its_place_in_the_sequence() -> None:
    draws, generator = SeededDraws("d-1"), random.Random("d-1")
    draws.skip()
    draws.skip()
    for _ in range(2):
        generator.random()
    assert draws.random() == generator.random()
    draws.skip()  # once seeded, taken at once
    generator.random()
    assert draws.random() == generator.random()


def test_a_draw_among_one_seeds_nothing_and_leaves_the_later_draws_as_they_were() -> None:
    spec = Exploration(policy="softmax", temperature=0.5)
    draws, generator = SeededDraws("d-2"), random.Random("d-2")
    assert draw([0.4], spec, 1, draws) == draw([0.4], spec, 1, generator) == [(0, 1.0)]
    assert draws._generator is None  # the 4-µs seeding waits for a draw that is read
    assert draw([0.4, 0.9, 0.1], spec, 2, draws) == draw([0.4, 0.9, 0.1], spec, 2, generator)
    assert draws.random() == generator.random()


@pytest.mark.parametrize("group", ["treatment", "control"])
def test_a_decision_draws_alike_with_seeded_draws(fixture_catalogue: Catalogue, group: str) -> None:
    for n in range(40):
        s = situation(faq_view_30m=2, group=group, customer=f"c:{n}")
        seed = f"d-{n}"
        a = decide(fixture_catalogue, "web.faq", s, LinearScorer(), SeededDraws(seed))
        assert a == decide(fixture_catalogue, "web.faq", s, LinearScorer(), random.Random(seed))
        assert a.chosen


def test_a_persisted_group_wins_over_a_new_share(tmp_path: Path) -> None:
    c = catalogue(tmp_path, BASE.replace("share: 0.0", "share: 1.0"))
    assert (
        decide(c, "web.home", situation(group="treatment"), LinearScorer(), random.Random(1)).group
        == "treatment"
    )
    first_sight = decide(c, "web.home", situation(group=None), LinearScorer(), random.Random(1))
    assert (first_sight.group, first_sight.assigned_group) == ("control", "control")


def test_per_action_holdout_is_assigned_once_and_then_kept(tmp_path: Path) -> None:
    c = catalogue(tmp_path, TEMPLATE.replace("holdout_share_here", "1.0"))
    d = decide(c, "web.home", situation(), LinearScorer(), random.Random(1))
    assert d.assigned_holdouts == {"a": True}
    assert {v.action_id: v.status for v in d.verdicts}["a"] == "holdout"
    kept = decide(c, "web.home", situation(held_out={"a": False}), LinearScorer(), random.Random(1))
    assert kept.assigned_holdouts == {}
    assert [ch.action_id for ch in kept.chosen] == ["a"]


HELD = """
version: t
holdout: {share: 0.0, seed: s}
exploration: {epsilon: 0.0}
placements:
  web.home: {channel: web, limit: 1}
actions:
  - {id: a, channel: web, placements: [web.home], prior: 0.2, value: 4, holdout: 0.5}
  - {id: b, channel: web, placements: [web.home], prior: 0.2, value: 1}
  - {id: c, channel: web, placements: [web.home], prior: 0.2, value: 2, holdout: 0.5}
"""


class CountingDraws:
    """``random.Random``, counting the draws asked of it."""

    def __init__(self, seed: int) -> None:
        self.generator, self.count = random.Random(seed), 0

    def random(self) -> float:
        self.count += 1
        return self.generator.random()


def test_a_held_out_customer_logs_the_withheld_action_they_would_have_been_served(tmp_path: Path) -> None:
    """a is the best (4 x 0.2), then c (2 x 0.2), then b: with epsilon 0 the best is always drawn."""
    c = catalogue(tmp_path, HELD)
    d = decide(c, "web.home", situation(held_out={"a": True, "c": False}), LinearScorer(), random.Random(1))
    assert [ch.action_id for ch in d.chosen] == ["c"]
    assert [(ch.action_id, ch.probability) for ch in d.holdout_counterfactual] == [("a", 1.0)]
    assert d.holdout_counterfactual[0].priority == pytest.approx(0.8)
    assert d.counterfactual == ()
    # c is withheld, but a would have been drawn anyway: nothing to log.
    d = decide(c, "web.home", situation(held_out={"a": False, "c": True}), LinearScorer(), random.Random(1))
    assert [ch.action_id for ch in d.chosen] == ["a"]
    assert d.holdout_counterfactual == ()


def test_each_withheld_action_is_put_back_alone(tmp_path: Path) -> None:
    """Held out of a and c: put back alone, each would beat b. Put back together, only a would be drawn,
    and c's held-out customers would not be those of treatment, where a stays in a's holdout."""
    c = catalogue(tmp_path, HELD)
    d = decide(c, "web.home", situation(held_out={"a": True, "c": True}), LinearScorer(), random.Random(1))
    assert [ch.action_id for ch in d.chosen] == ["b"]
    assert [ch.action_id for ch in d.holdout_counterfactual] == ["a", "c"]


def test_the_served_draw_is_the_same_with_or_without_a_holdout_counterfactual(tmp_path: Path) -> None:
    """With exploration, for many seeds: a customer held out of a is served exactly what they would be were
    a not offered at all (its rule false), which draws no holdout counterfactual."""
    text = HELD.replace("epsilon: 0.0", "epsilon: 0.6")
    held = catalogue(tmp_path, text)
    absent = catalogue(
        tmp_path, text.replace("value: 4, holdout: 0.5}", 'value: 4, holdout: 0.5, rule: "False"}')
    )
    drawn: Counter[tuple[str, ...]] = Counter()
    for seed in range(200):
        s = situation(held_out={"a": True, "c": False})
        with_it = decide(held, "web.home", s, LinearScorer(), random.Random(seed))
        without = decide(absent, "web.home", s, LinearScorer(), random.Random(seed))
        assert without.holdout_counterfactual == ()
        assert (with_it.chosen, with_it.eligible) == (without.chosen, without.eligible)
        assert with_it.offered[1:] == without.offered[1:]
        drawn[tuple(ch.action_id for ch in with_it.holdout_counterfactual)] += 1
    # a at the first draw: 0.4 (greedy) + 0.2 (its share of epsilon over 3).
    assert set(drawn) == {("a",), ()}
    assert abs(drawn[("a",)] - 200 * 0.6) <= 4.5 * math.sqrt(200 * 0.6 * 0.4)


def test_a_decision_that_withholds_nothing_draws_nothing_more(tmp_path: Path) -> None:
    c = catalogue(tmp_path, HELD)
    for held_out, draws in [
        ({"a": False, "c": False}, 1),
        ({"a": True, "c": False}, 2),
        ({"a": True, "c": True}, 3),
    ]:
        rng = CountingDraws(1)
        d = decide(c, "web.home", situation(held_out=held_out), LinearScorer(), rng)
        assert rng.count == draws  # the served draw, and one per withheld action
        assert bool(d.holdout_counterfactual) == (draws > 1)


def test_a_control_customer_held_out_of_an_action_gets_no_holdout_counterfactual(tmp_path: Path) -> None:
    """The control counterfactual is what treatment would have served, in this customer's own holdouts as
    in treatment: without a. And no holdout counterfactual: the action's holdout is measured within
    treatment only (docs/uplift.md)."""
    c = catalogue(tmp_path, HELD)
    s = situation(group="control", held_out={"a": True, "c": False})
    rng = CountingDraws(1)
    d = decide(c, "web.home", s, LinearScorer(), rng)
    assert d.chosen == ()
    assert [ch.action_id for ch in d.counterfactual] == ["c"]
    assert d.holdout_counterfactual == ()
    assert {v.action_id: v.reason for v in d.verdicts}["a"] == "in this action's 50% holdout"
    assert rng.count == 1  # the control counterfactual's generator only


def test_priority_multiplies_propensity_context_weight_value_and_levers(tmp_path: Path) -> None:
    c = catalogue(tmp_path, BASE)
    d = decide(c, "web.home", situation(context={"device": "mobile"}), LinearScorer(), random.Random(1))
    [choice] = d.chosen
    assert choice.priority == pytest.approx(0.2 * 1.5 * 4.0 * 0.5)


def test_a_rule_that_fails_on_a_profile_makes_the_action_ineligible(tmp_path: Path) -> None:
    c = catalogue(tmp_path, BASE.replace('rule: "True"', 'rule: "context.hour > 12"'))
    status, reason = statuses(c, "web.home", situation())["a"]
    assert status == "ineligible"
    assert reason.startswith("rule could not be evaluated")


TEMPLATE = """
version: t
holdout: {share: 0.0, seed: s}
exploration: {epsilon: 0.0}
placements:
  web.home: {channel: web}
actions:
  - id: a
    channel: web
    placements: [web.home]
    rule: "True"
    prior: 0.2
    value: 4
    levers: 0.5
    holdout: holdout_share_here
    context_weights: {device: {mobile: 1.5}}
"""
BASE = TEMPLATE.replace("holdout_share_here", "0.0")


@pytest.mark.parametrize("policy", ["epsilon_greedy", "softmax"])
def test_probabilities_sum_to_one_and_respect_the_floor(policy: str) -> None:
    rng = random.Random(5)
    spec = Exploration(policy=policy, epsilon=0.2, temperature=0.3, floor=0.02)  # type: ignore[arg-type]
    for n in range(1, 30):
        priorities = [rng.random() * rng.choice([0.001, 1, 100]) for _ in range(n)]
        probs = probabilities(priorities, spec)
        assert math.isclose(sum(probs), 1.0, rel_tol=1e-12)
        assert (
            min(probs) >= min(0.02, 1 / n) - 1e-12 if policy == "softmax" else min(probs) >= 0.2 / n - 1e-12
        )


def test_epsilon_zero_always_picks_the_argmax_and_splits_ties() -> None:
    spec = Exploration(epsilon=0.0)
    assert probabilities([0.1, 0.7, 0.3], spec) == [0.0, 1.0, 0.0]
    assert probabilities([0.7, 0.1, 0.7], spec) == [0.5, 0.0, 0.5]
    rng = random.Random(1)
    assert all(draw([0.1, 0.7, 0.3], spec, 1, rng)[0] == (1, 1.0) for _ in range(1000))


def test_the_draw_follows_its_stated_probabilities() -> None:
    """20,000 seeded first draws: each count within 4.5 standard deviations of its expectation."""
    spec = Exploration(epsilon=0.3)
    priorities = [0.5, 0.2, 0.2, 0.1]
    expected = probabilities(priorities, spec)
    rng, n = random.Random(12345), 20_000
    counts = Counter(draw(priorities, spec, 1, rng)[0][0] for _ in range(n))
    for i, p in enumerate(expected):
        assert abs(counts[i] - n * p) <= 4.5 * math.sqrt(n * p * (1 - p))


def test_top_k_draws_distinct_actions_with_their_conditional_probabilities() -> None:
    spec = Exploration(epsilon=0.0)
    chosen = draw([0.3, 0.9, 0.5], spec, 3, random.Random(2))
    assert chosen == [(1, 1.0), (2, 1.0), (0, 1.0)]


def test_control_share_over_100k_ids_is_within_a_binomial_bound() -> None:
    n, share = 100_000, 0.05
    control = sum(holdout.group("seed-1", share, f"c:{i}") == holdout.CONTROL for i in range(n))
    assert abs(control - n * share) <= 4.5 * math.sqrt(n * share * (1 - share))


def test_holdout_assignment_is_a_pure_function_of_seed_and_id() -> None:
    ids = [f"c:{i}" for i in range(1000)]
    assert [holdout.bucket("s", "global", i) for i in ids] == [holdout.bucket("s", "global", i) for i in ids]
    assert [holdout.bucket("s", "global", i) for i in ids] != [holdout.bucket("t", "global", i) for i in ids]
    # Raising the share only moves customers into control; nobody leaves it (before persistence too).
    low = {i for i in ids if holdout.group("s", 0.05, i) == holdout.CONTROL}
    high = {i for i in ids if holdout.group("s", 0.10, i) == holdout.CONTROL}
    assert low <= high
