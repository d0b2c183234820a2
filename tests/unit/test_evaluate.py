"""Off-policy estimators and calibration on synthetic logs whose truth is known.

The synthetic world: six contexts (three journey stages x two devices), four actions (the last not
eligible at the ``purchase`` stage), reward probabilities from a per-action logistic model of stage and
device, and a logging policy that gives 70% to a favourite action per context and spreads the rest. The
value of any policy is then an exact sum over contexts, and so is the variance of its IPS estimate.

Seeds are fixed and nothing is retried: every assertion is deterministic. That the 95% intervals hold
the truth is checked at this seed (on another, each would miss one time in twenty: over 200 seeds they
covered it 94.5% to 96.5% of the time, docs/evaluation.md); the bounds that do not depend on the seed
come from the exact variance: an IPS estimate within 4 standard errors (a miss is about 1 in 16,000),
and an interval as wide as 1.96 exact standard errors, within 10%.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from feature_store.features import feature_names
from models import evaluate as ev
from models.evaluate import Logged
from models.snapshot import EMPTY
from policies.catalogue import load

CATALOGUE = Path(__file__).parents[1] / "fixtures" / "catalogue"
STAGES = ("awareness", "consideration", "purchase")
STAGE_P = (0.5, 0.3, 0.2)
DEVICES = ("mobile", "desktop")
ACTIONS = ("a", "b", "c", "d")
BASE = {"a": -2.5, "b": -2.0, "c": -3.0, "d": -2.2}
STAGE_EFFECT = {"a": (0.0, 0.5, 1.0), "b": (0.3, 0.0, -0.5), "c": (0.0, 1.0, 1.8), "d": (0.6, 0.0, 0.0)}
DESKTOP_EFFECT = {"a": 0.4, "b": -0.3, "c": 0.2, "d": 0.0}
FAVOURITE = {("awareness", "mobile"): "b", ("awareness", "desktop"): "a", ("consideration", "mobile"): "d"}
N = 20_000
T0 = 1_790_000_000_000

Context = tuple[str, str]


def contexts() -> list[tuple[Context, float]]:
    return [((s, d), ps * 0.5) for s, ps in zip(STAGES, STAGE_P, strict=True) for d in DEVICES]


def eligible_actions(x: Context) -> tuple[str, ...]:
    return ACTIONS[:3] if x[0] == "purchase" else ACTIONS


def q(x: Context, a: str) -> float:
    """The true probability of a positive reward."""
    z = BASE[a] + STAGE_EFFECT[a][STAGES.index(x[0])] + (DESKTOP_EFFECT[a] if x[1] == "desktop" else 0.0)
    return 1 / (1 + math.exp(-z))


def logging_policy(x: Context) -> dict[str, float]:
    actions = eligible_actions(x)
    favourite = FAVOURITE.get(x, "c")
    return {a: (0.7 if a == favourite else 0.0) + 0.3 / len(actions) for a in actions}


def best_policy(x: Context) -> dict[str, float]:
    """A deterministic target: the truly best action."""
    actions = eligible_actions(x)
    best = max(actions, key=lambda a: q(x, a))
    return {a: float(a == best) for a in actions}


def tilted_policy(x: Context) -> dict[str, float]:
    """A stochastic target: half on the alphabetically last eligible action, half uniform."""
    actions = eligible_actions(x)
    return {a: 0.5 * (a == actions[-1]) + 0.5 / len(actions) for a in actions}


def value(policy: ev.Callable[[Context], Mapping[str, float]]) -> float:
    return sum(px * sum(p * q(x, a) for a, p in policy(x).items()) for x, px in contexts())


def ips_sd(policy: ev.Callable[[Context], Mapping[str, float]]) -> float:
    """The standard deviation of one decision's IPS term under the logging policy (r is 0/1)."""
    second = sum(
        px * sum(pi**2 / logging_policy(x)[a] * q(x, a) for a, pi in policy(x).items() if pi > 0)
        for x, px in contexts()
    )
    return math.sqrt(second - value(policy) ** 2)


def synthetic(n: int = N, seed: int = 7) -> list[Logged]:
    rng = np.random.default_rng(seed)
    xs = contexts()
    picks = rng.choice(len(xs), size=n, p=[px for _, px in xs])
    out = []
    for i, k in enumerate(picks):
        x = xs[k][0]
        probabilities = logging_policy(x)
        actions = list(probabilities)
        a = actions[rng.choice(len(actions), p=list(probabilities.values()))]
        reward = float(rng.random() < q(x, a))
        out.append(
            Logged(
                decision_id=f"d-{i}",
                placement="web.product_page",
                time_ms=T0,
                features={"stage": x[0]},
                context={"device": x[1]},
                eligible=probabilities,
                action=a,
                probability=probabilities[a],
                reward=reward,
            )
        )
    return out


def as_policy(policy: ev.Callable[[Context], Mapping[str, float]]) -> ev.Policy:
    return lambda d: policy((str(d.features["stage"]), str(d.context["device"])))


@pytest.fixture(scope="module")
def logs() -> list[Logged]:
    return synthetic()


@pytest.fixture(scope="module")
def estimates(logs: list[Logged]) -> dict[str, ev.PolicyEstimate]:
    policies = {
        "logged": ev.logged_policy,
        "best": as_policy(best_policy),
        "tilted": as_policy(tilted_policy),
        "uniform": ev.uniform_policy,
    }
    return {e.policy: e for e in ev.estimate(logs, policies, seed=0)}


def inside(e: ev.Estimate, truth: float) -> bool:
    return e.low <= truth <= e.high


def test_the_logging_policy_is_recovered_by_ips_snips_and_dr(estimates: dict[str, ev.PolicyEstimate]) -> None:
    truth = value(logging_policy)
    e = estimates["logged"]
    for name, got in (("ips", e.ips), ("snips", e.snips), ("dr", e.dr)):
        assert inside(got, truth), (name, got, truth)
    # The interval is the one the variance says: 1.96 sd / sqrt(n), give or take the sampling of sd.
    half = (e.ips.high - e.ips.low) / 2
    assert half == pytest.approx(ev.Z95 * ips_sd(logging_policy) / math.sqrt(N), rel=0.05)
    assert e.effective_n == pytest.approx(N)
    assert (e.agreement, e.unsupported) == (1.0, 0.0)


@pytest.mark.parametrize("target", [best_policy, tilted_policy])
def test_ips_of_another_policy_recovers_its_true_value(
    estimates: dict[str, ev.PolicyEstimate], target: ev.Callable[[Context], dict[str, float]]
) -> None:
    e = estimates["best" if target is best_policy else "tilted"]
    truth = value(target)
    se = ips_sd(target) / math.sqrt(N)
    assert inside(e.ips, truth), (e.ips, truth)
    assert abs(e.ips.value - truth) < 4 * se
    assert (e.ips.high - e.ips.low) / 2 == pytest.approx(ev.Z95 * se, rel=0.1)
    assert inside(e.snips, truth), (e.snips, truth)
    assert inside(e.dr, truth), (e.dr, truth)
    # DR with a well-specified reward model is no wider than IPS.
    assert e.dr.stderr <= e.ips.stderr


def test_a_policy_that_differs_is_told_apart_from_the_logging_policy(
    estimates: dict[str, ev.PolicyEstimate],
) -> None:
    assert value(best_policy) > value(logging_policy) + 0.02
    assert estimates["best"].dr.low > estimates["logged"].dr.high


def test_the_logged_policy_ips_is_the_observed_mean_exactly(logs: list[Logged]) -> None:
    [e] = ev.estimate(logs, {"logged": ev.logged_policy}, predicted=np.zeros(len(ev.pairs(logs).action)))
    observed = ev.mean_reward(np.asarray([d.reward for d in logs]))
    assert e.ips.value == observed.value
    assert e.snips.value == observed.value
    assert (e.ips.low, e.ips.high) == (observed.low, observed.high)


def test_snips_and_dr_by_hand() -> None:
    target = np.asarray([1.0, 0.0, 0.5])
    logged = np.asarray([0.5, 0.5, 0.25])
    rewards = np.asarray([1.0, 1.0, 0.0])
    w = target / logged  # 2, 0, 2
    assert ev.ips(target, logged, rewards).value == pytest.approx(2 / 3)
    s = ev.snips(target, logged, rewards)
    assert s.value == pytest.approx(0.5)
    residual = w * (rewards - 0.5)  # 1, 0, -1
    assert s.stderr == pytest.approx(math.sqrt(np.sum(residual**2) / 6) / np.mean(w))
    predicted = np.asarray([0.4, 0.6, 0.2])
    direct = np.asarray([0.4, 0.3, 0.5])
    d = ev.doubly_robust(target, logged, rewards, predicted, direct)
    assert d.value == pytest.approx(np.mean([0.4 + 2 * 0.6, 0.3, 0.5 + 2 * -0.2]))
    assert ev.effective_sample_size(target, logged) == pytest.approx(16 / 8)


def test_the_reward_model_is_cross_fitted_and_close_to_the_truth(logs: list[Logged]) -> None:
    flat = ev.pairs(logs)
    predicted = ev.reward_model(logs, seed=0)
    truth = np.asarray(
        [q((str(logs[i].features["stage"]), str(logs[i].context["device"])), a) for i, a in zip(
            flat.row, flat.action, strict=True
        )]
    )  # fmt: skip
    # Off the favourite actions there are only ~100 decisions per context and fold: a few points off.
    assert np.mean(np.abs(predicted - truth)) < 0.02
    assert np.max(np.abs(predicted - truth)) < 0.08
    # Cross-fitted: a decision's prediction does not move when its own reward flips.
    flipped = [*logs]
    flipped[0] = dataclasses.replace(logs[0], reward=1 - logs[0].reward)
    again = ev.reward_model(flipped, seed=0)
    own = flat.row == 0
    assert np.array_equal(predicted[own], again[own])
    assert not np.array_equal(predicted, again)


def test_greedy_splits_ties_and_skips_unknown_actions() -> None:
    d = Logged("d", "p", T0, {}, {}, {"x": 0.5, "y": 0.25, "z": 0.25}, "x", 0.5, 1.0)
    priorities = {"x": 1.0, "y": 2.0, "z": 2.0}
    assert ev.greedy(lambda _, a: priorities[a])(d) == {"y": 0.5, "z": 0.5}
    assert ev.greedy(lambda _, a: 1.0 if a == "x" else None)(d) == {"x": 1.0}
    assert ev.greedy(lambda _, a: None)(d) == {}
    assert ev.uniform_policy(d) == {"x": 1 / 3, "y": 1 / 3, "z": 1 / 3}


def test_calibration_buckets_on_known_data() -> None:
    propensities = [i / 1000 for i in range(1000)]
    # In bucket k (propensities k/10 to k/10 + 0.099), exactly 10k of the 100 are positive.
    positives = [float(i % 100 < 10 * (i // 100)) for i in range(1000)]
    cal = ev.calibration(propensities, positives)
    assert len(cal.buckets) == 10
    for k, b in enumerate(cal.buckets):
        assert b.n == 100
        assert (b.low, b.high) == (pytest.approx(k / 10), pytest.approx(k / 10 + 0.099))
        assert b.predicted == pytest.approx(k / 10 + 0.0495)
        assert b.observed == pytest.approx(k / 10)
    assert cal.positives == 450
    assert cal.mean_predicted == pytest.approx(0.4995)
    assert cal.observed_rate == pytest.approx(0.45)


def test_auc_log_loss_and_brier_by_hand() -> None:
    p, y = [0.1, 0.2, 0.3, 0.4], [0.0, 1.0, 0.0, 1.0]
    cal = ev.calibration(p, y)
    assert cal.auc == pytest.approx(0.75)  # of the 4 (positive, negative) pairs, 3 are ordered right
    expected = -np.mean([math.log(0.9), math.log(0.2), math.log(0.7), math.log(0.4)])
    assert cal.log_loss == pytest.approx(expected)
    assert cal.brier == pytest.approx(np.mean([0.01, 0.64, 0.09, 0.36]))
    assert len(cal.buckets) == 4  # fewer values than deciles: one bucket each
    assert ev.calibration([0.2, 0.3], [0.0, 0.0]).auc is None


# --- the log as it is stored: join, skips, the report --------------------------------------------------


def entry(
    decision_id: str,
    served: list[tuple[str, float]],
    eligible: dict[str, float],
    *,
    time_ms: int = T0,
    group: str = "treatment",
    scores: dict[str, list[float]] | None = None,
    placement: str = "web.product_page",
) -> dict[str, str]:
    fields = {
        "decision_id": decision_id,
        "customer": "c:1",
        "placement": placement,
        "group": group,
        "time_ms": str(time_ms),
        "actions": json.dumps([{"action_id": a, "channel": "web", "probability": p} for a, p in served]),
        "counterfactual": "[]",
        "eligible": json.dumps(eligible),
        "features": json.dumps({"stage": "consideration", "faq_view_30m": 2}),
        "context": json.dumps({"device": "mobile"}),
        "catalogue_version": "test-1",
        "model_version": "prior",
    }
    if scores is not None:
        fields["scores"] = json.dumps(scores)
    return fields


def reward(decision_id: str, action_id: str, positive: bool, counterfactual: str = "0") -> dict[str, str]:
    return {
        "decision_id": decision_id,
        "action_id": action_id,
        "counterfactual": counterfactual,
        "value": "1.0" if positive else "0.0",
        "positive": "1" if positive else "0",
        "source": "outcome" if positive else "none",
        "time_ms": str(T0),
        "placement": "web.product_page",
        "group": "treatment",
    }


def test_the_report_says_what_it_left_out_and_why(tmp_path: Path) -> None:
    catalogue = load(CATALOGUE, feature_names())
    elig = {"proactive_chat": 0.9, "generic_banner": 0.1}
    scores = {"proactive_chat": [0.05, 0.25], "generic_banner": [0.05, 0.05]}
    now = T0 + 31 * 60_000  # past the fixture's 30-minute windows
    decisions = [
        entry("d-1", [("proactive_chat", 0.9)], elig, scores=scores),
        entry("d-2", [("generic_banner", 0.1)], elig, scores=scores),
        entry("d-3", [("proactive_chat", 0.9)], elig),  # logged before `scores`
        entry("d-4", [("generic_banner", 1.0)], elig, group="control", scores=scores),
        entry("d-5", [], {}, scores={}),
        entry("d-6", [("proactive_chat", 0.9)], elig, time_ms=now - 60_000, scores=scores),  # window open
        entry("d-7", [("proactive_chat", 0.9)], elig, scores=scores),  # not joined
        entry("d-8", [("proactive_chat", 0.0)], {"proactive_chat": 0.0}, scores=scores),
        entry("d-9", [("gone", 1.0)], {"gone": 1.0}, scores={"gone": [0.1, 0.1]}),
        {"decision_id": "d-10", "placement": "web.product_page"},
        entry("d-11", [("service_notice", 0.6), ("proactive_chat", 0.8)],
              {"service_notice": 0.6, "proactive_chat": 0.4}, placement="web.faq",
              scores={"service_notice": [0.2, 0.1], "proactive_chat": [0.05, 0.25]}),
    ]  # fmt: skip
    rewards = [
        reward("d-1", "proactive_chat", True),
        reward("d-2", "generic_banner", False),
        reward("d-3", "proactive_chat", False),
        reward("d-4", "generic_banner", True),
        reward("d-4", "proactive_chat", True, counterfactual="1"),
        reward("d-6", "proactive_chat", True),
        reward("d-8", "proactive_chat", False),
        reward("d-9", "gone", True),
        reward("d-11", "service_notice", True),
        reward("d-11", "proactive_chat", False),
        reward("d-1", "proactive_chat", False),  # a repeat: the first one counts
    ]
    report = ev.analyse(decisions, rewards, catalogue, EMPTY, now_ms=now, plot=tmp_path / "out" / "cal.png")
    assert report.usable == 4  # d-1, d-2, d-3 and d-11 (slot 1)
    assert report.multi_slot == 1
    assert report.skipped == {
        "control": 1,
        "nothing_served": 1,
        "window_open": 1,
        "not_joined": 1,
        "zero_probability": 1,
        "unknown_actions": 1,
        "malformed": 1,
    }
    assert report.no_scores == 1
    assert report.observed is not None
    assert report.observed.value == pytest.approx(2 / 4)
    assert report.estimate_of("logged").ips.value == report.observed.value
    assert [e.policy for e in report.estimates] == list(ev.POLICIES)
    # Calibration: every served action with a closed window, a reward and a propensity, both groups.
    assert report.calibration is not None
    assert report.calibration.n == 7  # d-1, d-2, d-4, d-8, d-9, d-11 x2
    assert report.calibration.positives == 4
    assert any("fewer than 100" in w for w in report.warnings)
    assert any("probability 0" in w for w in report.warnings)
    assert (tmp_path / "out" / "cal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["estimates"][0]["ips"]["value"] == report.observed.value
    text = ev.render(report)
    assert "model_greedy" in text
    assert "attribution window still open: 1" in text


def test_greedy_and_value_only_use_the_live_catalogue() -> None:
    catalogue = load(CATALOGUE, feature_names())
    d = Logged(
        "d", "web.product_page", T0, {"faq_view_30m": 2}, {}, {"proactive_chat": 0.5, "generic_banner": 0.5},
        "generic_banner", 0.5, 0.0,
    )  # fmt: skip
    from models.snapshot import ActionModel, LinearScorer, Snapshot

    # Priors are equal (0.05); values are 5 and 1: both choose proactive_chat.
    assert ev.value_only(catalogue)(d) == {"proactive_chat": 1.0}
    assert ev.model_greedy(catalogue, LinearScorer(EMPTY))(d) == {"proactive_chat": 1.0}
    # A model that learned generic_banner is 20 times as likely to be clicked turns the greedy choice.
    learned = Snapshot("m-1", T0, {"generic_banner": ActionModel({}, intercept=5.0, observations=10_000)})
    assert ev.model_greedy(catalogue, LinearScorer(learned))(d) == {"generic_banner": 1.0}


def test_an_empty_log_says_so(tmp_path: Path) -> None:
    catalogue = load(CATALOGUE, feature_names())
    report = ev.analyse([], [], catalogue, EMPTY, now_ms=T0, plot=tmp_path / "cal.png")
    assert (report.usable, report.estimates, report.calibration, report.plot) == (0, [], None, None)
    assert report.warnings == [
        "the decision log is empty (for this window and placement): nothing to evaluate"
    ]
    assert "the decision log is empty" in ev.render(report)
    assert not (tmp_path / "cal.png").exists()


def test_times_are_durations_ago_or_rfc3339() -> None:
    now = 1_800_000_000_000
    assert ev.parse_when("24h", now) == now - 86_400_000
    assert ev.parse_when("2026-11-22T10:00:00Z", now) == 1_795_341_600_000
    assert ev.parse_when("2026-11-22T11:00:00+01:00", now) == 1_795_341_600_000
    assert ev.parse_when("2026-11-22T10:00:00", now) == 1_795_341_600_000
    with pytest.raises(ValueError, match="neither a duration"):
        ev.parse_when("yesterday", now)


def test_the_command_needs_a_redis_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NBA_REDIS_URL", raising=False)
    assert ev.main([]) == 2
    assert "set NBA_REDIS_URL" in capsys.readouterr().err
    monkeypatch.setenv("NBA_REDIS_URL", "redis://127.0.0.1:1")
    assert ev.main(["--since", "yesterday"]) == 2
    assert "neither a duration" in capsys.readouterr().err
