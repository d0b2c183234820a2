"""``nba simulate``: does the service learn? A synthetic population drives the real HTTP API.

Customers with a hidden segment (their device, and whether they are deal seekers) visit a website whose
one banner slot (``web.sim``) asks ``POST /v1/decide`` what to show. The website passes what it knows
as ``context`` (``{"device": "mobile", "segment": "deal"}``), exactly as a real one would. Whether the
customer clicks is drawn from a ground truth the service never sees (:data:`TRUTH`: one click
probability per action and segment); a click is reported with ``POST /v1/outcomes``, and a purchase
(more likely after a click) with ``POST /v1/events``. The service learns from those alone.

Three policies are scored on the same customers: the service; the oracle, which shows each customer
the action with the highest true click probability; uniform random. Oracle and random are scored by
their expected reward (the true probability of what they would show), and the service both by its
expected reward (the true probability of what it chose: the fair comparison) and by the clicks it
actually got. Control customers (the catalogue's 10% holdout) are shown nothing and score for no
policy; their purchases measure the uplift: observed treatment conversion minus control's, against the
true uplift, which the ground truth gives exactly for the choices the service made.

Deterministic given the seed on the simulator's side: the population, who visits when, and the random
numbers that decide clicks and purchases (one pair per visit, drawn whatever is shown, so the same
visitor meets the same luck under any policy). The service's side is not: its exploration draws are
seeded by decision id, and when a model snapshot reaches the workers depends on timing.

``python -m models.simulate`` or ``nba simulate``; docs/simulation.md shows a run and the figures.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

PLACEMENT: Final = "web.sim"
ACTIONS: Final = ("discount_banner", "comparison_guide", "app_download", "new_arrivals")
MOBILE_SHARE: Final = 0.6  # of customers on a phone; the others are on a desktop
DEAL_SHARE: Final = 0.4  # of customers who are deal seekers, independently of the device

# The ground truth: the chance that a customer of a segment clicks each action. Each segment has its
# own best action (or nearly so: for desktop deal seekers the discount is close behind), and no single
# action is good for everyone: the best one-size-fits-all action earns half of what the oracle does.
_TABLE: Final = {
    # (device, segment):    discount_banner  comparison_guide  app_download  new_arrivals
    ("mobile", "deal"):     (0.30,           0.03,             0.10,         0.08),
    ("mobile", "regular"):  (0.04,           0.06,             0.25,         0.10),
    ("desktop", "deal"):    (0.18,           0.22,             0.02,         0.08),
    ("desktop", "regular"): (0.03,           0.28,             0.02,         0.10),
}  # fmt: skip
TRUTH: Final[Mapping[tuple[str, str], Mapping[str, float]]] = {
    segment: dict(zip(ACTIONS, row, strict=True)) for segment, row in _TABLE.items()
}
BASE_CONVERSION: Final = 0.05  # a visit ends in a purchase without a click (and always so for control)
CLICK_CONVERSION: Final = 0.40  # a visit that clicked ends in a purchase
REVENUE: Final = 40.0  # of each simulated order
WINDOW: Final = 300  # decisions in the sliding window of the running ratio to the oracle
TARGET: Final = 0.9  # of the oracle's reward


def catalogue_path() -> Path:
    """The simulation catalogue: the ``sim_catalogue`` folder beside this module."""
    return Path(__file__).with_name("sim_catalogue")


# ---------------------------------------------------------------------------------------------------
# The ground truth


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    device: str  # "mobile" or "desktop"
    segment: str  # "deal" or "regular"

    @property
    def context(self) -> dict[str, str]:
        """What the website sends with every decide call."""
        return {"device": self.device, "segment": self.segment}

    def click_probability(self, action: str | None) -> float:
        """The true chance that this customer clicks ``action`` (0 when nothing is shown)."""
        return 0.0 if action is None else TRUTH[(self.device, self.segment)][action]

    @property
    def oracle(self) -> float:
        """The oracle's expected reward: the best true click probability for this customer."""
        return max(TRUTH[(self.device, self.segment)].values())

    @property
    def uniform(self) -> float:
        """Uniform random's expected reward: the mean true click probability over the actions."""
        return sum(TRUTH[(self.device, self.segment)].values()) / len(ACTIONS)


def population(size: int, seed: int) -> list[Customer]:
    """``size`` customers with segments drawn from ``seed``; the same seed, the same population."""
    rng = random.Random(f"nba-simulate-population:{seed}")
    return [
        Customer(
            f"sim-{seed}-{i:05d}",
            "mobile" if rng.random() < MOBILE_SHARE else "desktop",
            "deal" if rng.random() < DEAL_SHARE else "regular",
        )
        for i in range(size)
    ]


def conversion_probability(clicked: bool) -> float:
    """The true chance that a visit ends in a purchase."""
    return CLICK_CONVERSION if clicked else BASE_CONVERSION


def expected_uplift(click_probability: float) -> float:
    """The true conversion uplift of showing an action with this click probability, against nothing."""
    return click_probability * (CLICK_CONVERSION - BASE_CONVERSION)


def references(people: Sequence[Customer], epsilon: float) -> dict[str, float]:
    """What policies that learn nothing, or the most a one-size-fits-all policy, or everything, would
    earn per visit, as shares of the oracle's, over ``people`` (each equally likely to visit):

    - ``random``: uniform random, and also a service that learned nothing (equal priors tie, and a tie
      is drawn uniformly);
    - ``best_single_action``: epsilon-greedy that always favours the one action best on average: the
      most a policy that ignores who the customer is can earn under that exploration;
    - ``ceiling``: epsilon-greedy that knows the truth: ``1 - epsilon`` of the oracle's choices, the
      rest uniform. No service exploring with ``epsilon`` can do better on average.
    """
    oracle = sum(c.oracle for c in people)
    uniform = sum(c.uniform for c in people) / oracle
    single = max(sum(c.click_probability(a) for c in people) for a in ACTIONS) / oracle
    return {
        "random": round(uniform, 4),
        "best_single_action": round((1 - epsilon) * single + epsilon * uniform, 4),
        "ceiling": round((1 - epsilon) + epsilon * uniform, 4),
    }


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True, slots=True)
class Step:
    """One visit: what the service did and what each policy earns."""

    group: str  # "treatment", "control", or "fallback" (the service answered without deciding)
    action: str | None  # what the service showed
    expected: float  # the true click probability of what the service showed
    clicked: bool
    converted: bool
    oracle: float  # 0 for control, which no policy serves
    uniform: float  # likewise

    @property
    def true_uplift(self) -> float:
        return expected_uplift(self.expected)


@dataclass(slots=True)
class SimulationResult:
    seed: int
    customers: int
    steps: list[Step] = field(default_factory=list)
    epsilon: float = 0.1  # the simulation placement's, as the service reported it
    elapsed_s: float = 0.0
    model_version: str = "prior"

    def ratio(self, start: int = 0, stop: int | None = None) -> float:
        """The service's expected reward over the oracle's, over the decisions ``start:stop``."""
        steps = self.steps[start:stop]
        oracle = sum(s.oracle for s in steps)
        return sum(s.expected for s in steps) / oracle if oracle else 0.0

    def windowed(self, window: int = WINDOW) -> list[float | None]:
        """After each decision, the ratio to the oracle over the last ``window`` decisions (``None``
        until there were that many)."""
        out: list[float | None] = []
        service = oracle = 0.0
        for i, step in enumerate(self.steps):
            service += step.expected
            oracle += step.oracle
            if i >= window:
                service -= self.steps[i - window].expected
                oracle -= self.steps[i - window].oracle
            out.append(service / oracle if i + 1 >= window and oracle > 0 else None)
        return out

    def target_points(self, target: float = TARGET, window: int = WINDOW) -> tuple[int | None, int | None]:
        """The number of decisions after which the windowed ratio first reached ``target``, and after
        which it stayed at or above it to the end of the run (``None``: never)."""
        running = self.windowed(window)
        reached = next((i + 1 for i, r in enumerate(running) if r is not None and r >= target), None)
        below = [i for i, r in enumerate(running) if r is not None and r < target]
        if reached is None:
            return None, None
        held = reached if not below else (below[-1] + 2 if below[-1] + 1 < len(running) else None)
        return reached, held

    def uplift(self) -> dict[str, Any]:
        """The true conversion uplift of the service's choices, and the estimate from the groups."""
        treated = [s for s in self.steps if s.group == "treatment"]
        control = [s for s in self.steps if s.group == "control"]
        truth = sum(s.true_uplift for s in treated) / len(treated) if treated else 0.0
        if not treated or not control:
            return {"true": round(truth, 4), "estimated": None, "ci95": None}
        p_t = sum(s.converted for s in treated) / len(treated)
        p_c = sum(s.converted for s in control) / len(control)
        half = 1.96 * math.sqrt(p_t * (1 - p_t) / len(treated) + p_c * (1 - p_c) / len(control))
        return {
            "true": round(truth, 4),
            "estimated": round(p_t - p_c, 4),
            "ci95": [round(p_t - p_c - half, 4), round(p_t - p_c + half, 4)],
            "treatment_conversion": round(p_t, 4),
            "control_conversion": round(p_c, 4),
        }

    def summary(self) -> dict[str, Any]:
        n = len(self.steps)
        reached, held = self.target_points()
        running = self.windowed()
        oracle = sum(s.oracle for s in self.steps)
        return {
            "decisions": n,
            "seed": self.seed,
            "customers": self.customers,
            "treatment": sum(s.group == "treatment" for s in self.steps),
            "control": sum(s.group == "control" for s in self.steps),
            "fallbacks": sum(s.group == "fallback" for s in self.steps),
            "elapsed_s": round(self.elapsed_s, 1),
            "model_version": self.model_version,
            "reward": {
                "service_clicks": sum(s.clicked for s in self.steps if s.group != "control"),
                "service_expected": round(sum(s.expected for s in self.steps), 1),
                "oracle": round(oracle, 1),
                "random": round(sum(s.uniform for s in self.steps), 1),
            },
            "ratio_to_oracle": {
                "service": round(self.ratio(), 3),
                "service_last_third": round(self.ratio(n - n // 3), 3),
                "service_final_window": round(running[-1], 3) if running and running[-1] else None,
                "random": round(sum(s.uniform for s in self.steps) / oracle, 3) if oracle else None,
            },
            f"reached_{round(TARGET * 100)}pct_at": reached,
            f"held_{round(TARGET * 100)}pct_from": held,
            "references": references(population(self.customers, self.seed), self.epsilon),
            "uplift": self.uplift(),
        }


class SimulationError(RuntimeError):
    """The service cannot be simulated against (wrong catalogue, an error answer)."""


async def simulate(
    base_url: str,
    *,
    decisions: int,
    seed: int,
    api_key: str | None = None,
    progress: bool = True,
    customers: int = 300,
    rate: float = 40.0,
    page_views: bool = True,
) -> SimulationResult:
    """Drive the service at ``base_url`` (running the simulation catalogue) for ``decisions`` visits,
    at most ``rate`` per second: each a decide call, and a click outcome and a purchase when the ground
    truth says so. ``page_views``: each decide call carries the page view that prompted it, as a website's
    does (the profile's page-view counters then grow with every visit)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.monotonic()

    async def wall_clock(i: int) -> None:
        if (wait := started + i / rate - time.monotonic()) > 0:
            await asyncio.sleep(wait)

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
        return await drive(client, wall_clock, decisions, seed, customers, progress, page_views)


async def drive(
    client: httpx.AsyncClient,
    pace: Callable[[int], Awaitable[None]],
    decisions: int,
    seed: int,
    customers: int,
    progress: bool,
    page_views: bool,
) -> SimulationResult:
    """The visits, through ``client``, the ``i``-th after ``pace(i)`` returns: ``pace`` waits for the
    wall clock (:func:`simulate`) or moves a simulated one (app/simulation.py)."""
    people = population(customers, seed)
    rng = random.Random(f"nba-simulate-run:{seed}")
    result = SimulationResult(seed, customers)
    result.epsilon = await _check_catalogue(client)
    bar = _progress_bar(decisions, progress)
    started = time.monotonic()
    try:
        for i in range(decisions):
            # Drawn whatever happens next, so that the draws do not depend on the service's answers.
            customer = people[rng.randrange(customers)]
            click_draw, purchase_draw = rng.random(), rng.random()
            await pace(i)
            step, answer = await _visit(
                client, customer, click_draw, purchase_draw, f"{seed}-{i}", page_views
            )
            result.steps.append(step)
            result.model_version = str(answer.get("model_version", result.model_version))
            if bar is not None:
                bar.update(1)
                if (i + 1) % 100 == 0 and (running := result.windowed()[-1]) is not None:
                    bar.set_postfix_str(f"vs oracle {running:.0%}")
    finally:
        if bar is not None:
            bar.close()
    result.elapsed_s = time.monotonic() - started
    return result


async def _check_catalogue(client: httpx.AsyncClient) -> float:
    """Check that the service runs the simulation catalogue; its exploration epsilon at the placement."""
    answer = await client.get("/v1/actions")
    if answer.status_code != 200:
        raise SimulationError(f"GET /v1/actions answered {answer.status_code}: {answer.text}")
    catalogue = answer.json()
    actions = {a["id"] for a in catalogue.get("actions", [])}
    if PLACEMENT not in catalogue.get("placements", {}) or actions != set(ACTIONS):
        raise SimulationError(
            f"the service runs catalogue {catalogue.get('version')!r}, not the simulation's: start it with "
            f"nba serve --policies {catalogue_path()} (or let nba simulate start one: leave out --url)"
        )
    placement = catalogue["placements"][PLACEMENT]
    exploration = placement.get("exploration") or catalogue.get("exploration") or {}
    if exploration.get("policy", "epsilon_greedy") != "epsilon_greedy":
        raise SimulationError(
            f"the placement {PLACEMENT} must explore epsilon-greedy, as the simulation's does"
        )
    return float(exploration.get("epsilon", 0.1))


async def _visit(
    client: httpx.AsyncClient,
    customer: Customer,
    click_draw: float,
    purchase_draw: float,
    visit: str,
    page_views: bool,
) -> tuple[Step, dict[str, Any]]:
    body: dict[str, Any] = {
        "customer_id": customer.id,
        "placement": PLACEMENT,
        "context": customer.context,
    }
    if page_views:  # as a website does: the page view that prompted the call, applied before deciding
        body["event"] = {"type": "page_view", "event_id": f"sim-pv-{visit}", "properties": {"page": "/"}}
    answer = await _post(client, "/v1/decide", body)
    shown = answer["actions"][0]["action_id"] if answer["actions"] else None
    group = "fallback" if answer["fallback"] else str(answer["group"])
    expected = customer.click_probability(shown)
    clicked = click_draw < expected
    if clicked and group == "treatment":  # a fallback was not recorded: it cannot take outcomes
        outcome = {"decision_id": answer["decision_id"], "action_id": shown, "type": "click"}
        await _post(client, "/v1/outcomes", outcome)
    converted = purchase_draw < conversion_probability(clicked)
    if converted:
        properties = {"order_id": f"sim-o-{visit}", "revenue": REVENUE}
        await _post(
            client, "/v1/events", {"customer_id": customer.id, "type": "purchase", "properties": properties}
        )
    scored = group != "control"  # no policy serves the control group
    step = Step(
        group,
        shown,
        expected,
        clicked,
        converted,
        customer.oracle if scored else 0.0,
        customer.uniform if scored else 0.0,
    )
    return step, answer


async def _post(client: httpx.AsyncClient, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    answer = await client.post(path, json=body)
    if answer.status_code not in (200, 202):
        raise SimulationError(f"POST {path} answered {answer.status_code}: {answer.text}")
    data: dict[str, Any] = answer.json()
    return data


def _progress_bar(total: int, wanted: bool) -> Any:
    """A tqdm bar on a terminal, when asked for and tqdm is installed; else ``None``."""
    if not wanted or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return None
    return tqdm(total=total, unit="decision", desc="simulating", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# The figure


def plot(result: SimulationResult, path: Path) -> None:
    """Cumulative rewards, the running ratio to the oracle and the uplift, as a 900x500 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(1, len(result.steps) + 1))

    def cumulative(values: Sequence[float]) -> list[float]:
        out, total = [], 0.0
        for v in values:
            total += v
            out.append(total)
        return out

    steps = result.steps
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 5), dpi=100, width_ratios=(3, 2))
    left.plot(xs, cumulative([s.oracle for s in steps]), label="oracle (expected)", color="black")
    left.plot(xs, cumulative([s.expected for s in steps]), label="service (expected)", color="tab:blue")
    realized = [float(s.clicked) if s.group != "control" else 0.0 for s in steps]
    left.plot(xs, cumulative(realized), label="service (clicks)", color="tab:blue", alpha=0.5, lw=0.8)
    left.plot(xs, cumulative([s.uniform for s in steps]), label="uniform random (expected)", color="tab:gray")
    left.set_xlabel("decisions")
    left.set_ylabel("cumulative reward (clicks)")
    left.set_title("Cumulative reward", fontsize=10)
    left.legend(loc="upper left", fontsize=8)
    uplift = result.uplift()
    if uplift["estimated"] is not None:
        lo, hi = uplift["ci95"]
        text = (
            f"conversion uplift\ntrue {uplift['true']:+.3f}\n"
            f"estimated {uplift['estimated']:+.3f}\n(95% CI {lo:+.3f} to {hi:+.3f})"
        )
        left.text(0.97, 0.03, text, transform=left.transAxes, ha="right", va="bottom", fontsize=8,
                  bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9})  # fmt: skip

    running = result.windowed()
    shown = [(x, r) for x, r in zip(xs, running, strict=True) if r is not None]
    if shown:
        right.plot([x for x, _ in shown], [r for _, r in shown], color="tab:blue", label="service")
    refs = references(population(result.customers, result.seed), result.epsilon)
    right.axhline(refs["ceiling"], color="black", ls=":", lw=0.8, label="epsilon-greedy knowing the truth")
    right.axhline(TARGET, color="tab:red", ls="--", lw=0.8, label=f"{TARGET:.0%} of the oracle")
    right.axhline(refs["best_single_action"], color="tab:gray", ls=":", lw=0.8, label="best single action")
    right.axhline(refs["random"], color="tab:gray", lw=0.8, label="uniform random")
    reached, _ = result.target_points()
    if reached is not None:
        right.axvline(reached, color="tab:red", lw=0.6, alpha=0.6)
    right.set_ylim(0, 1.05)
    right.set_xlim(0, len(steps))
    right.set_xlabel("decisions")
    right.set_title(f"Expected reward / oracle's, last {WINDOW} decisions", fontsize=10)
    right.legend(loc="lower right", fontsize=7)
    fig.suptitle(
        f"nba simulate: {len(steps)} decisions, {result.customers} customers, seed {result.seed}", fontsize=11
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
