"""The pure parts of learning: the reward join, pending members, snapshots and the blended scorer,
maturity at its edges, and the one vector that scoring and learning must agree on. No Redis."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from app.services import _json, _logged_features
from feature_store.features import NEVER, feature_names, features
from feature_store.profile import DAY_MS, RawProfile, bucket_field
from models.rewards import COUNTERFACTUAL, SERVED, Earned, Pending, at_close, from_outcome
from models.snapshot import (
    COLD_BELOW,
    EMPTY,
    MATURE_AT,
    MATURE_POSITIVES,
    PRIOR_WEIGHT,
    ActionModel,
    LinearScorer,
    Snapshot,
    from_model,
    logit,
    maturity,
    sigmoid,
    to_model,
)
from models.vectorize import CENTRE_WINDOW, CROSSED, Centre, for_raw, vector
from policies.catalogue import Catalogue, load

NOW = 1_795_000_000_000  # a fixed instant (ms), mid-afternoon UTC
MINUTE = 60_000
FIXTURE = Path(__file__).parents[1] / "fixtures" / "catalogue"


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load(FIXTURE, feature_names())


# The reward join ---------------------------------------------------------------------------------------

OUTCOME_TYPES = ("impression", "click", "dismiss", "conversion")
# reward -> outcome type -> what it earns at once (None: nothing)
EXPECTED: dict[str, dict[str, Earned | None]] = {
    "click": {
        "impression": None,
        "click": Earned(1.0, True, "outcome"),
        "dismiss": None,
        "conversion": Earned(1.0, True, "outcome"),
    },
    "conversion": {
        "impression": None,
        "click": None,
        "dismiss": None,
        "conversion": Earned(1.0, True, "outcome"),
    },
    "value": {
        "impression": None,
        "click": None,
        "dismiss": None,
        "conversion": Earned(12.5, True, "outcome"),
    },
}


@pytest.mark.parametrize("reward", sorted(EXPECTED))
@pytest.mark.parametrize("outcome_type", OUTCOME_TYPES)
def test_what_an_outcome_earns_at_once(reward: str, outcome_type: str) -> None:
    assert from_outcome(reward, outcome_type, 12.5) == EXPECTED[reward][outcome_type]


def test_value_reward_earns_the_outcome_value_and_click_conversion_ignore_it() -> None:
    assert from_outcome("value", "conversion", 0.0) == Earned(0.0, True, "outcome")
    assert from_outcome("value", "conversion", 99.99) == Earned(99.99, True, "outcome")
    assert from_outcome("click", "conversion", 99.99) == Earned(1.0, True, "outcome")
    assert from_outcome("conversion", "conversion", 99.99) == Earned(1.0, True, "outcome")


def test_an_unknown_reward_or_outcome_earns_nothing() -> None:
    assert from_outcome("click", "purchase", 1.0) is None
    assert from_outcome("views", "click", 1.0) is None


@pytest.mark.parametrize("reward", ["click", "conversion", "value"])
def test_a_window_without_purchases_closes_as_a_zero(reward: str) -> None:
    assert at_close(reward, []) == Earned(0.0, False, "none")


def test_purchases_at_close_earn_by_reward() -> None:
    purchases = [19.99, 5.01, 0.333]
    assert at_close("click", purchases) == Earned(0.0, False, "none")  # clicks ignore purchases
    assert at_close("conversion", purchases) == Earned(1.0, True, "purchase")  # one, however many
    assert at_close("value", purchases) == Earned(25.33, True, "purchase")  # their sum, to the cent
    assert at_close("value", [10.0]) == Earned(10.0, True, "purchase")
    # A purchase of nothing is still a purchase: converted, worth 0.
    assert at_close("conversion", [0.0]) == Earned(1.0, True, "purchase")
    assert at_close("value", [0.0]) == Earned(0.0, True, "purchase")


# Pending members ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "decision_id", ["d-0190abc", "d|with|bars", "|", "d||", "ünïcode d", "d-1|generic_banner|s"]
)
@pytest.mark.parametrize("kind", [SERVED, COUNTERFACTUAL])
def test_pending_members_round_trip_whatever_the_decision_id(decision_id: str, kind: str) -> None:
    pending = Pending(decision_id, "proactive_chat", kind)
    member = pending.member()
    assert member.endswith(f"|proactive_chat|{kind}")
    assert Pending.parse(member) == pending


# Snapshots and the scorer ------------------------------------------------------------------------------


def test_a_snapshot_round_trips_through_json() -> None:
    snapshot = Snapshot(
        "m-7",
        NOW,
        {
            "proactive_chat": ActionModel(
                weights={"faq_view_30m": 0.25, "placement=web.product_page": -1.5, "ctx.device=mobile": 1e-9},
                intercept=logit(0.05),
                observations=123,
                positives=11,
                reward_sum=11.5,
                updated_ms=NOW - 5,
                optimizer={"faq_view_30m": 0.75, "placement=web.product_page": 3.0},
            ),
            "generic_banner": ActionModel(weights={}, intercept=0.0),
        },
        Centre(
            {"faq_view_30m": 0.5, "ctx.device=mobile": 0.25},
            {"faq_view_30m": 0.1, "ctx.device=mobile": 0.0},
            40,
        ),
    )
    text = snapshot.to_json()
    assert json.loads(text)["version"] == "m-7"
    back = Snapshot.from_json(text)
    assert back == snapshot
    assert back.to_json() == text
    assert Snapshot.from_json(EMPTY.to_json()) == EMPTY


def _model(p: float, n: int, positives: int = 0, weights: dict[str, float] | None = None) -> ActionModel:
    """A model that says ``p`` (before ``weights``), learned with fake negatives."""
    return ActionModel(
        weights=weights or {}, intercept=logit(to_model(p)), observations=n, positives=positives
    )


def test_without_a_model_the_propensity_is_exactly_the_prior(catalogue: Catalogue) -> None:
    chat, banner = catalogue.actions["proactive_chat"], catalogue.actions["generic_banner"]
    f = features(None, NOW)
    for scorer in (
        LinearScorer(),
        LinearScorer(Snapshot("m-1", NOW, {"generic_banner": _model(0.9, 100)})),  # another action's
        LinearScorer(Snapshot("m-1", NOW, {"proactive_chat": _model(0.9, 0)})),  # no observations yet
    ):
        assert scorer.propensity(chat, f, {}, "web.product_page", NOW) == chat.spec.prior
    assert LinearScorer().propensity(banner, f, {"device": "mobile"}, "web.faq", NOW) == banner.spec.prior
    assert LinearScorer().version == "prior"
    assert LinearScorer().maturity("proactive_chat") == "cold"


@pytest.mark.parametrize("n", [1, 5, 20, 100, 10_000])
def test_observations_blend_the_model_in_with_prior_weight(catalogue: Catalogue, n: int) -> None:
    chat = catalogue.actions["proactive_chat"]
    prior = chat.spec.prior
    f = features(None, NOW)
    # A model of intercept alone: it says 0.8 whatever the features.
    scorer = LinearScorer(Snapshot("m-1", NOW, {"proactive_chat": _model(0.8, n)}))
    got = scorer.propensity(chat, f, {}, "web.product_page", NOW)
    assert got == pytest.approx((PRIOR_WEIGHT * prior + n * 0.8) / (PRIOR_WEIGHT + n), rel=1e-9)
    assert prior < got < 0.8


def test_the_blend_moves_monotonically_toward_the_model(catalogue: Catalogue) -> None:
    chat = catalogue.actions["proactive_chat"]
    f = features(None, NOW)
    blended = [
        LinearScorer(Snapshot("m", NOW, {"proactive_chat": _model(0.8, n)})).propensity(
            chat, f, {}, "web.product_page", NOW
        )
        for n in (1, 2, 10, 20, 50, 1000, 1_000_000)
    ]
    assert blended == sorted(blended)
    assert blended[3] == pytest.approx((chat.spec.prior + 0.8) / 2)  # n == PRIOR_WEIGHT: halfway
    assert blended[-1] == pytest.approx(0.8, abs=1e-4)


def test_the_scorer_reads_the_weights_of_the_vector(catalogue: Catalogue) -> None:
    chat = catalogue.actions["proactive_chat"]
    f = {**features(None, NOW), "faq_view_30m": 3}
    model = _model(0.5, 10**9, weights={"faq_view_30m": 0.5, "ctx.device=mobile": -1.0})
    scorer = LinearScorer(Snapshot("m", NOW, {"proactive_chat": model}))
    got = scorer.propensity(chat, f, {"device": "mobile"}, "web.product_page", NOW)
    z = logit(1 / 3) + 0.5 * math.log1p(3) - 1.0  # the model's log-odds: its q, from which p = q / (1 - q)
    assert got == pytest.approx(math.exp(z), rel=1e-6)  # q / (1 - q) is the odds
    assert 0 < got < 0.5


@pytest.mark.parametrize("p", [0.0, 1e-4, 0.05, 0.3, 0.5, 0.99, 1.0])
def test_fake_negatives_map_a_chance_to_what_the_model_learns_and_back(p: float) -> None:
    q = to_model(p)
    # Every example is learned as a negative, and each positive once more: of 1 + p examples, p positive.
    assert q == pytest.approx(p / (1 + p))
    assert 0 <= q <= 0.5
    assert from_model(q) == pytest.approx(p)


def test_a_model_saying_more_positives_than_examples_reads_as_certain_and_keeps_its_order() -> None:
    assert from_model(0.49) < from_model(0.5) < from_model(0.7) < from_model(0.99) < 1.0
    assert from_model(0.5) == pytest.approx(1.0, abs=1e-7)
    assert round(from_model(0.7), 6) == 1.0  # as the decision log records it


def test_the_centre_keeps_exact_means_and_variances_then_follows_the_traffic() -> None:
    centre = Centre()
    rows = [{"a": 1.0, "ctx.x=1": 1.0}, {"a": 3.0}, {"a": 2.0, "b": 4.0}]
    for x in rows:
        centre.update(x)
    assert centre.count == 3
    assert centre.means["a"] == pytest.approx(2.0)
    assert centre.variances["a"] == pytest.approx(2 / 3)  # population variance of 1, 3, 2
    assert centre.means["b"] == pytest.approx(4 / 3)  # missing counts as 0
    assert centre.variances["b"] == pytest.approx(((4 / 3) ** 2 * 2 + (8 / 3) ** 2) / 3)
    assert centre.means["ctx.x=1"] == pytest.approx(1 / 3)
    # Past the window, a new value weighs 1 / CENTRE_WINDOW: the mean moves toward what comes.
    before = centre.means["a"]
    centre.count = CENTRE_WINDOW
    centre.update({"a": 2.0 + CENTRE_WINDOW})
    assert centre.means["a"] == pytest.approx(before + 1.0)


def test_a_feature_not_seen_for_long_fades_out_of_the_centre() -> None:
    centre = Centre(count=CENTRE_WINDOW)
    centre.update({"ctx.page=/old": 1.0})
    for _ in range(200_000 // 1000):
        for _ in range(1000):
            centre.update({"a": 1.0})
        if "ctx.page=/old" not in centre.means:
            break
    assert "ctx.page=/old" not in centre.means
    assert centre.means["a"] > 0.99


def test_only_the_features_the_service_makes_are_scaled_and_never_up() -> None:
    centre = Centre({"a": 0.0, "b": 0.0, "ctx.n": 0.0}, {"a": 8.0, "b": 8.0, "ctx.n": 100.0}, 10)
    assert centre.scale == pytest.approx(0.25)  # 1 / sqrt(8 + 8): the context's variance is the caller's
    assert centre.centred({"a": 2.0, "ctx.n": 10.0}) == {"a": 0.5, "b": 0.0, "ctx.n": 10.0}
    assert Centre({"a": 0.0}, {"a": 0.01}, 10).scale == 1.0


def test_a_model_of_centred_vectors_scores_raw_ones_alike() -> None:
    centre = Centre({"a": 1.5, "b": 0.2, "ctx.x=1": 0.4}, {"a": 9.0, "b": 7.0, "ctx.x=1": 0.24}, 100)
    weights = {"a": 0.7, "b": -1.1, "ctx.x=1": 2.0, "ctx.y": 0.3}
    intercept, raw = for_raw(-1.2, weights, centre.means, centre.scale)
    for x in ({"a": 3.0}, {"b": 1.0, "ctx.x=1": 1.0}, {}, {"a": 1.0, "ctx.y": -4.0, "ctx.new=1": 1.0}):
        centred = centre.centred(x)
        expected = -1.2 + sum(w * centred.get(k, 0.0) for k, w in weights.items())
        assert intercept + sum(v * raw.get(k, 0.0) for k, v in x.items()) == pytest.approx(expected)


def test_the_scorer_scores_a_snapshot_as_the_learner_learned_it(catalogue: Catalogue) -> None:
    chat = catalogue.actions["proactive_chat"]
    f = {**features(None, NOW), "faq_view_30m": 3}
    centre = Centre({"faq_view_30m": 1.0, "ctx.device=mobile": 0.5}, {"faq_view_30m": 4.0}, 50)
    model = _model(0.1, 10**9, weights={"faq_view_30m": 0.5, "ctx.device=mobile": -1.0})
    scorer = LinearScorer(Snapshot("m", NOW, {"proactive_chat": model}, centre))
    got = scorer.propensity(chat, f, {"device": "mobile"}, "web.product_page", NOW)
    x = centre.centred(vector(f, {"device": "mobile"}, "web.product_page", NOW))
    z = model.intercept + sum(w * x.get(k, 0.0) for k, w in model.weights.items())
    assert got == pytest.approx(from_model(sigmoid(z)), rel=1e-6)  # the prior weighs 20 in 10**9


def test_the_vector_of_each_kind_of_feature() -> None:
    features = {
        "days_since_page_view": 0.0,  # just now: the highest recency, though 0
        "days_since_purchase": 73.0,
        "days_since_signup": NEVER,  # never: no recency
        "days_since_first_seen": 400.0,  # over a year: none either
        "delivery_scan_total": 2,  # a custom type's counter that begins with d
        "page_view_total": 0,
        "revenue": 100_000.0,  # NEVER's value, but an amount
        "orders": 3,
        "is_known": True,
        "purchased_7d": False,
        "cart_value": 12.5,
        "stage": "retention",
        "articles_read": frozenset({"returns"}),  # sets and maps are not in the vector
        "consent": {"email": True},
    }
    x = vector(features, {}, "web.home", NOW)
    hour = (NOW % 86_400_000) / 3_600_000
    assert x == {
        "placement=web.home": 1.0,
        "hour.sin": math.sin(2 * math.pi * hour / 24),
        "hour.cos": math.cos(2 * math.pi * hour / 24),
        "recency_page_view": 1.0,
        "recency_purchase": pytest.approx(0.8),
        "delivery_scan_total": math.log1p(2),
        "revenue": math.log1p(100_000.0),
        "orders": math.log1p(3),
        "is_known": 1.0,
        "cart_value": math.log1p(12.5),
        "stage=retention": 1.0,
    }


def test_categorical_context_is_crossed_in_pairs_for_the_first_keys() -> None:
    x = vector({}, {"segment": "deal", "device": "mobile", "price": 12.5, "vip": True}, "web.p", NOW)
    assert x["ctx.device=mobile&segment=deal"] == 1.0
    assert x["ctx.device=mobile&vip=true"] == x["ctx.segment=deal&vip=true"] == 1.0
    assert not any("price" in k and "&" in k for k in x)  # numbers are not crossed
    many = vector({}, {f"k{i:02d}": "v" for i in range(CROSSED + 3)}, "web.p", NOW)
    crossed = {k for k in many if "&" in k}
    assert len(crossed) == CROSSED * (CROSSED - 1) // 2
    assert all(f"k{CROSSED:02d}" not in k for k in crossed)  # only the first CROSSED keys, by name


@pytest.mark.parametrize(
    ("observations", "positives", "expected"),
    [
        (0, 0, "cold"),
        (COLD_BELOW - 1, COLD_BELOW - 1, "cold"),
        (COLD_BELOW, 0, "learning"),
        (COLD_BELOW, MATURE_POSITIVES, "learning"),
        (MATURE_AT - 1, MATURE_POSITIVES, "learning"),
        (MATURE_AT, MATURE_POSITIVES - 1, "learning"),
        (MATURE_AT, MATURE_POSITIVES, "mature"),
        (10 * MATURE_AT, 10 * MATURE_POSITIVES, "mature"),
    ],
)
def test_maturity_at_its_edges(observations: int, positives: int, expected: str) -> None:
    assert (COLD_BELOW, MATURE_AT, MATURE_POSITIVES) == (50, 500, 10)
    assert maturity(observations, positives) == expected
    scorer = LinearScorer(Snapshot("m", NOW, {"a": _model(0.5, observations, positives)}))
    assert scorer.maturity("a") == expected


# One vector for scoring and learning -------------------------------------------------------------------


def _as_logged(values: dict[str, Any]) -> dict[str, Any]:
    """The features as the learner reads them back: logged by the decision, through its JSON summary."""
    logged: dict[str, Any] = json.loads(_json(_logged_features(values)))
    return logged


def _windows(event_type: str, count: int, at_ms: int) -> dict[str, str]:
    field = bucket_field(at_ms, event_type, NOW)
    return {} if field is None else {field: str(count)}


def _recent(event_type: str, at_ms: int, **properties: Any) -> tuple[str, float]:
    return json.dumps({"y": event_type, "t": at_ms, "p": properties}), float(at_ms)


def _profiles() -> dict[str, dict[str, Any]]:
    """Hand-built profiles, each as the full features the policy scores with at NOW."""
    just_now, minutes_ago, weeks_ago = NOW - 500, NOW - 7 * MINUTE, NOW - 20 * DAY_MS
    faq_reader = RawProfile(
        profile={
            "first": str(weeks_ago),
            "n:faq_view": "3",
            "t:faq_view": str(just_now),
            "n:page_view": "10",
            "t:page_view": str(minutes_ago),
        },
        windows={**_windows("faq_view", 3, just_now), **_windows("page_view", 10, minutes_ago)},
        recent=(
            _recent("faq_view", just_now, article_id="returns"),
            _recent("faq_view", just_now - 1000, article_id="sizing"),
        ),
    )
    shopper = RawProfile(
        profile={
            "first": str(NOW - 400 * DAY_MS),
            "n:product_view": "4",
            "t:product_view": str(minutes_ago),
            "n:add_to_cart": "1",
            "t:add_to_cart": str(minutes_ago),
            "n:purchase": "2",
            "t:purchase": str(NOW - 45 * DAY_MS),
            "orders": "2",
            "revenue": "123.45",
            "first_purchase": str(NOW - 300 * DAY_MS),
            "cart_changed": str(minutes_ago),
            "c:email": f"{weeks_ago}|1",
            "c:sms": f"{weeks_ago}|0",
            "a:tier": f'{weeks_ago}|"gold"',
            "a:score": f"{weeks_ago}|7",
        },
        windows={**_windows("product_view", 4, minutes_ago), **_windows("add_to_cart", 1, minutes_ago)},
        cart={"sku-1": f"2|19.9|{minutes_ago}", "sku-2": f"1||{minutes_ago}"},
        recent=(_recent("product_view", minutes_ago, item_id="sku-1"),),
    )
    out = {
        "faq_reader": features(faq_reader, NOW),
        "shopper": features(shopper, NOW),
        "anonymous first sight": features(None, NOW),
    }
    # Edited by hand: values at the edges of what the log leaves out.
    edges = features(None, NOW, ("loyalty.points",))
    edges.update(
        is_known=True,
        days_since_purchase=0.0,  # bought this very moment
        days_since_page_view=-0.001,  # a little in the future (within the tolerance)
        days_since_search=364.999,
        days_since_email_open=365.0,  # a year: no longer recent
        days_since_cart_change=NEVER,
        revenue=0.0,
        orders=0,
        cart_value=0.01,
        purchased_24h=True,
        loyalty_points_total=2,
        stage="loyalty",
    )
    out["edited by hand"] = edges
    return out


PROFILES = _profiles()
CONTEXTS = [{}, {"device": "mobile", "hour": 14, "vip": True, "discount": 0, "ratio": -2.5, "big": 10**6}]


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("context", CONTEXTS, ids=["no context", "context"])
def test_the_logged_features_give_the_vector_the_full_ones_give(name: str, context: dict[str, Any]) -> None:
    full = PROFILES[name]
    for placement, at in (("web.product_page", NOW), ("email.cart_recovery", NOW + 11 * 3_600_000)):
        scored = vector(full, context, placement, at)
        learned = vector(_as_logged(full), json.loads(_json(context)), placement, at)
        assert learned == scored


def test_the_hand_built_profiles_exercise_every_kind_of_feature() -> None:
    """Guards the test above: the profiles reach the cases that could disagree."""
    names = set().union(*(vector(f, {}, "p", NOW) for f in PROFILES.values()))
    assert {"recency_last_seen", "recency_first_seen", "recency_purchase", "recency_page_view"} <= names
    assert {"faq_view_30m", "orders", "revenue", "cart_value", "is_known", "purchased_24h"} <= names
    assert {"stage=awareness", "stage=consideration", "stage=retention", "stage=loyalty"} <= names
    assert "recency_email_open" not in names
    assert "recency_cart_change" in names
    full = PROFILES["anonymous first sight"]
    assert (full["days_since_first_seen"], full["days_since_last_seen"]) == (0.0, 0.0)
