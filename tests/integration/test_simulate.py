"""The simulator (models/simulate.py, app/simulation.py): its ground truth, and seeded runs.

- On simulated time: the app in process with its learner, one clock, counted decision ids. A seed fixes
  the whole run, so the run is checked against the figures docs/simulation.md promises.
- On the wall clock: ``nba serve`` with the simulation catalogue on its embedded Redis, which also runs
  the learner, driven over HTTP like a website. Timing plays a part (how far the learner lags), so the
  bound leaves room for it.
"""

from __future__ import annotations

import math

import pytest

from app.simulation import simulate_on_simulated_time
from load_tests.service import running_service
from models.simulate import (
    ACTIONS,
    BASE_CONVERSION,
    CLICK_CONVERSION,
    TRUTH,
    catalogue_path,
    expected_uplift,
    population,
    references,
    simulate,
)

LEARNING = 2000  # docs/simulation.md: what the service earns after this many decisions is 90% of the oracle's

SEED = 1  # the command's default, the run shown in docs/simulation.md
DECISIONS = 1500  # at 40 a second: under 40 s
EPSILON = 0.1  # the simulation catalogue's


def test_the_population_is_drawn_from_the_seed() -> None:
    assert population(300, SEED) == population(300, SEED)
    assert population(300, SEED) != population(300, SEED + 1)
    people = population(3000, SEED)
    mobile = sum(c.device == "mobile" for c in people) / len(people)
    deal = sum(c.segment == "deal" for c in people) / len(people)
    assert abs(mobile - 0.6) < 0.03
    assert abs(deal - 0.4) < 0.03
    assert len({c.id for c in people}) == len(people)


def test_the_ground_truth_rewards_personalisation() -> None:
    best = {segment: max(row, key=row.__getitem__) for segment, row in TRUTH.items()}
    assert best == {
        ("mobile", "deal"): "discount_banner",
        ("mobile", "regular"): "app_download",
        ("desktop", "deal"): "comparison_guide",
        ("desktop", "regular"): "comparison_guide",
    }
    for customer in population(300, SEED):
        probabilities = [customer.click_probability(a) for a in ACTIONS]
        assert all(0 < p < 1 for p in probabilities)
        assert (
            customer.oracle
            == max(probabilities)
            >= customer.uniform
            == pytest.approx(sum(probabilities) / len(ACTIONS))
        )
        assert customer.click_probability(None) == 0
    refs = references(population(300, SEED), EPSILON)
    # Learning nothing < the best one-size-fits-all < knowing everything (while exploring) < the oracle.
    assert refs["random"] < refs["best_single_action"] < refs["ceiling"] < 1
    assert refs["best_single_action"] < 0.55 < 0.9 < refs["ceiling"]


def test_the_true_uplift_is_what_a_click_adds_to_the_chance_of_buying() -> None:
    assert expected_uplift(0) == 0
    assert expected_uplift(0.3) == pytest.approx(0.3 * (CLICK_CONVERSION - BASE_CONVERSION))


async def test_on_simulated_time_a_seed_fixes_the_whole_run() -> None:
    one = await simulate_on_simulated_time(decisions=300, seed=SEED, progress=False)
    two = await simulate_on_simulated_time(decisions=300, seed=SEED, progress=False)
    assert one.steps == two.steps
    assert one.model_version == two.model_version != "prior"


@pytest.mark.slow
async def test_the_learned_policy_earns_ninety_percent_of_the_oracle_after_its_first_decisions() -> None:
    """The promise of docs/simulation.md, on seed 1: from decision 2000 on, the service's choices earn
    (in expectation under the ground truth) at least 90% of what the oracle's do. Exploring with
    epsilon 0.1, the most any policy can expect is 0.944 of the oracle; uniform random earns 0.437."""
    result = await simulate_on_simulated_time(decisions=3000, seed=SEED, progress=False)
    summary = result.summary()
    assert summary["fallbacks"] == 0, summary
    assert result.ratio(LEARNING) >= 0.9, summary
    assert result.ratio(LEARNING) > result.ratio(0, 1000) + 0.1, summary  # it learned: not luck alone
    reached, _ = result.target_points()
    assert reached is not None, summary
    assert all(s.action is None for s in result.steps if s.group == "control")


@pytest.mark.slow
async def test_a_seeded_simulation_learns_on_the_wall_clock() -> None:
    """Over the last third of 1500 decisions against ``nba serve``, the service's choices earn clearly
    more than uniform random's, and more than any one-size-fits-all policy.

    The bound: a quarter of the way from uniform random (which is also what a service that learned
    nothing earns: equal priors tie, and ties are drawn uniformly) to the ceiling of epsilon-greedy
    with perfect knowledge; for this population, 0.437 + (0.944 - 0.437) / 4 = 0.564 of the oracle. A
    service that learned nothing sits at 0.44 with a standard deviation of about 0.02 over the ~450
    scored decisions of the last third, so it cannot pass by luck; the best one-size-fits-all policy
    earns 0.508, so passing needs the context. The service as it learns today earns about 0.9 there
    (docs/simulation.md): the bound leaves room for a slow machine, on which the learner lags.
    """
    refs = references(population(300, SEED), EPSILON)
    bound = refs["random"] + (refs["ceiling"] - refs["random"]) / 4
    with running_service("--policies", str(catalogue_path())) as service:
        result = await simulate(service.base_url, decisions=DECISIONS, seed=SEED, progress=False)
    summary = result.summary()
    # A decision past its 50 ms budget falls back (a busy 2-core machine sees one in ~1500): a few are
    # timing, not learning; they score 0 for the service.
    assert summary["fallbacks"] <= DECISIONS // 100, summary
    assert summary["treatment"] + summary["control"] + summary["fallbacks"] == DECISIONS, summary
    assert summary["model_version"].startswith("m-"), summary  # the learner published
    assert all(s.action is None for s in result.steps if s.group == "control")
    last_third = result.ratio(DECISIONS - DECISIONS // 3)
    assert bound > refs["best_single_action"]
    assert last_third >= bound, f"last third {last_third:.3f} of the oracle, below {bound:.3f}: {summary}"
    # The uplift estimate is a noisy measure of the truth: its 95% interval, widened to 99.9%, holds it.
    uplift = summary["uplift"]
    low, high = uplift["ci95"]
    widen = (high - low) / 2 * (3.29 / 1.96 - 1)
    assert low - widen <= uplift["true"] <= high + widen, uplift
    assert not math.isnan(uplift["estimated"])
