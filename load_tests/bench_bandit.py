"""The service's learning against Vowpal Wabbit on a supervised-to-bandit stream.

    pip install -e '.[bench,tools]'     # vowpalwabbit, matplotlib
    python -m load_tests.bench_bandit --out-json docs/bandit-benchmark.json \
        --out-png docs/bandit-benchmark.png

A classification data set shipped with scikit-learn (``digits``, the default; ``wine``, ``iris``) or
river (``segments``: ImageSegments) becomes a contextual bandit: each class is an action, and choosing
the example's label earns a reward of 1, anything else 0. The rows are shuffled with ``--seed`` and
repeated ``--passes`` times (each pass in a new order); the features are standardized with a scaler fit
on the whole set (this measures learning, not generalisation).

Over that one stream, in the same order:

- the service: ``nba serve`` on its embedded Redis, with load_tests/bandit_catalogue (one action per
  class, all alike), and its learner. Each example is a ``POST /v1/decide`` with the features as the
  context (``f0`` .. ``fN``); a correct choice is reported as a ``click`` (``POST /v1/outcomes``). The
  learner learns every served action as a negative when it reads the decision, and a click as a
  positive on top of it when it reads the outcome (models/learner.py). The calls are paced at
  ``--rate`` decisions per second, so that what is learned reaches the scorer within a bounded number
  of decisions;
- Vowpal Wabbit, in process: ``--cb_explore_adf`` with shared features and one action line per class,
  learning after every example from the chosen action's cost (-reward) and probability; two settings,
  the best found overall and the best with epsilon-greedy exploration (the service's), both tuned on
  other seeds (``--tune`` runs the search again and uses what it finds);
- uniform random choice (simulated; its expectation is 1 / classes);
- the ceiling: the accuracy of a logistic regression trained offline on the labelled data (sklearn),
  cross-validated and in sample.

The progressive reward is the mean reward from the start of the stream to each point. The service runs
``--repeats`` times (a fresh service each time, about 95 s for the default stream), VW ``--vw-repeats``
times with other random draws: one run varies by several points with its draws alone. One JSON line
goes to stdout (and ``--out-json``), a plot of the progressive rewards to ``--out-png``.
``--ablations`` adds in-process replays of the service's own learner (the same vectors and centring, the
same river model, scorer, arbitration and exploration code) with one thing changed at a time, to tell
what a gap is due to.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import redis
from river import optim

from feature_store import keys
from feature_store.features import NEVER, features
from models.learner import LEARNING_RATE, _regression
from models.snapshot import PRIOR_WEIGHT, ActionModel, LinearScorer, Snapshot, logit, to_model
from models.vectorize import Centre, is_ours, vector
from policies.catalogue import Catalogue, load
from policies.exploration import draw
from policies.funnel import priority

CATALOGUE = Path(__file__).with_name("bandit_catalogue")
PLACEMENT = "web.bandit"
DATASETS = ("digits", "wine", "iris", "segments")

# Tuned with --tune on digits: streams 1 to 3, three runs each (the default run is stream 0); the best
# overall and the best with epsilon-greedy exploration. docs/bandit-benchmark.md lists what was tried.
VW_ARGS = "--cb_explore_adf --squarecb --gamma_scale 3 -q SA -l 8"
VW_EPSILON_GREEDY_ARGS = "--cb_explore_adf --epsilon 0.05 -q SA -l 4"
VW_GRID = (
    *(
        f"--cb_explore_adf --epsilon {e} -q SA -l {lr}"
        for e in (0.02, 0.05, 0.1, 0.2)
        for lr in (0.5, 1, 2, 4, 8)
    ),
    *(
        f"--cb_explore_adf --squarecb --gamma_scale {g} -q SA -l {lr}"
        for g in (1, 3, 10, 30, 100)
        for lr in (1, 2, 4, 8)
    ),
    "--cb_explore_adf --epsilon 0.1 -q SA -l 1 --cb_type ips",
    "--cb_explore_adf --epsilon 0.1 -q SA -l 1 --cb_type dr",
    "--cb_explore_adf --bag 5 -q SA -l 1",
)
TUNING_SEEDS = 3
TUNING_REPEATS = 3


@dataclass(frozen=True)
class Data:
    name: str
    x: np.ndarray[Any, Any]  # standardized, rows x features
    y: list[int]  # class index per row
    classes: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def load_data(name: str, *, standardize: bool = True) -> Data:
    """The data set, features standardized with a scaler fit on all of it (or as they come)."""
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    if name == "segments":
        from river.datasets import ImageSegments

        rows = list(ImageSegments())  # type: ignore[no-untyped-call]
        columns = sorted(rows[0][0])
        raw = np.array([[float(x[c]) for c in columns] for x, _ in rows])
        labels = [str(label) for _, label in rows]
    else:
        loaders = {"digits": datasets.load_digits, "wine": datasets.load_wine, "iris": datasets.load_iris}
        bunch = loaders[name]()
        raw = np.asarray(bunch.data, dtype=float)
        labels = [str(label) for label in bunch.target]
    classes = sorted(set(labels), key=lambda c: (len(c), c))
    index = {c: i for i, c in enumerate(classes)}
    x = StandardScaler().fit_transform(raw) if standardize else raw
    return Data(name, x, [index[label] for label in labels], classes)


def stream_order(rows: int, seed: int, passes: int) -> list[int]:
    """Row indices: ``passes`` passes over the data, each in its own seeded order."""
    rng = np.random.default_rng(seed)
    return [int(i) for _ in range(passes) for i in rng.permutation(rows)]


def context(data: Data, row: int) -> dict[str, float]:
    return {f"f{j}": float(v) for j, v in enumerate(data.x[row])}


def progressive(rewards: Sequence[int]) -> list[float]:
    total, out = 0, []
    for t, r in enumerate(rewards, 1):
        total += r
        out.append(total / t)
    return out


# --- the catalogue -------------------------------------------------------------------------------------


def _actions_yaml(classes: Sequence[str]) -> str:
    prior = round(1 / len(classes), 6)
    lines = [
        f"# One always-eligible action per class ({', '.join(classes)}), written by bench_bandit.",
        "actions:",
    ]
    lines += [
        f'  - {{id: class_{k}, channel: web, placements: [{PLACEMENT}], rule: "True", value: 1, '
        f"prior: {prior}}}"
        for k in range(len(classes))
    ]
    return "\n".join(lines) + "\n"


def _epsilon_of(catalogue_yaml: str) -> float:
    found = re.search(r"^\s*epsilon:\s*([0-9.]+)", catalogue_yaml, re.MULTILINE)
    assert found, "load_tests/bandit_catalogue/catalogue.yaml has no exploration epsilon"
    return float(found.group(1))


@contextlib.contextmanager
def bandit_catalogue(data: Data, epsilon: float | None) -> Iterator[tuple[Path, float]]:
    """The catalogue folder to run and its epsilon: the shipped one for digits at its own epsilon, else a
    temporary copy with actions for this data set's classes and the epsilon given."""
    shared = (CATALOGUE / "catalogue.yaml").read_text()
    shipped_epsilon = _epsilon_of(shared)
    shipped_actions = load(CATALOGUE, ()).actions
    if len(shipped_actions) == data.n_classes and epsilon in (None, shipped_epsilon):
        yield CATALOGUE, shipped_epsilon
        return
    epsilon = shipped_epsilon if epsilon is None else epsilon
    folder = Path(tempfile.mkdtemp(prefix="nba-bandit-catalogue-"))
    try:
        (folder / "catalogue.yaml").write_text(
            re.sub(r"^(\s*epsilon:\s*)[0-9.]+", rf"\g<1>{epsilon}", shared, count=1, flags=re.MULTILINE)
        )
        (folder / "actions.yaml").write_text(_actions_yaml(data.classes))
        yield folder, epsilon
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the service, over HTTP ----------------------------------------------------------------------------


@dataclass
class ServiceRun:
    rewards: list[int]
    wall_s: float
    decisions_per_s: float
    model_versions: int
    learn_delay: dict[str, dict[str, float]]
    learner_lag_max: int
    learner_lag_at_end: int
    fallbacks: int
    env: dict[str, str]


def run_service(
    data: Data, order: Sequence[int], folder: Path, *, rate: float, env: Mapping[str, str]
) -> ServiceRun:
    from load_tests.service import running_service

    rewards: list[int] = []
    decided_at: list[float] = []  # wall clock, as the service's time_ms
    served_at: list[float] = []  # the same, for the decisions that served an action (not fallbacks)
    versions: set[str] = set()
    lags: list[int] = []  # the learner's lag, every 100 decisions
    fallbacks = 0
    refresh_s = float(env.get("NBA_MODEL_REFRESH_S", "0.5"))
    with (
        running_service("--policies", str(folder), env=env) as service,
        httpx.Client(base_url=service.base_url, timeout=10) as client,
        redis.Redis.from_url(service.redis_url, decode_responses=True) as store,
    ):
        _wait_for_learner(store)
        published = _Published(store)
        start = time.monotonic()
        for t, row in enumerate(order):
            if rate > 0 and (ahead := start + t / rate - time.monotonic()) > 0:
                time.sleep(ahead)
            body = {"customer_id": f"bandit-{t}", "placement": PLACEMENT, "context": context(data, row)}
            if t % 100 == 0:
                lags.append(_learner_lag(store))
            published.poll()
            decided_at.append(time.time())
            answer = client.post("/v1/decide", json=body)
            assert answer.status_code == 200, answer.text
            decision = answer.json()
            if decision["fallback"]:  # out of its time budget: nothing chosen, nothing to learn
                fallbacks += 1
                rewards.append(0)
                continue
            assert len(decision["actions"]) == 1, decision
            served_at.append(decided_at[-1])
            versions.add(decision["model_version"])
            action = decision["actions"][0]["action_id"]
            reward = int(action == f"class_{data.y[row]}")
            rewards.append(reward)
            if reward:
                outcome = {"decision_id": decision["decision_id"], "action_id": action, "type": "click"}
                response = client.post("/v1/outcomes", json=outcome)
                assert response.status_code == 202, response.text
        wall_s = time.monotonic() - start
        lag = _learner_lag(store)  # decisions the learner had not yet taken when the stream ended
        deadline = time.monotonic() + 30
        while store.zcard(keys.PENDING) or _learner_lag(store):  # let it learn the last windows
            if time.monotonic() > deadline:
                raise SystemExit("the learner did not catch up within 30 s of the stream's end")
            published.poll()
            time.sleep(0.2)
        time.sleep(float(env.get("NBA_LEARNER_PUBLISH_S", "1")) + 0.5)
        published.poll()
        joined = store.xrange(keys.REWARDS)
    # How long until what a decision taught could be scored with: from the decision to the publish of the
    # snapshot holding it, plus half a worker refresh on average; and how many decisions were made
    # meanwhile. A click's publish is its joined reward entry's id. A decision's negative is learned when
    # the decision is read: its publish is that of the first snapshot whose actions had learned as many
    # negatives as there were served decisions up to it. A zero's joined entry is written when its window
    # closes (and the grace after it): when the learner before 0b3d4ab learned it.
    delays: dict[str, tuple[list[float], list[int]]] = {
        "positive": ([], []),
        "negative": ([], []),
        "zero_joined": ([], []),
    }

    def count(kind: str, decided_s: float, published_s: float) -> None:
        seconds, decisions = delays[kind]
        seconds.append(published_s - decided_s)
        decisions.append(bisect.bisect(decided_at, published_s) - bisect.bisect(decided_at, decided_s))

    for entry_id, fields in joined:
        kind = "positive" if fields["positive"] == "1" else "zero_joined"
        count(kind, int(fields["time_ms"]) / 1000, int(entry_id.split("-")[0]) / 1000 + refresh_s / 2)
    for n, decided_s in enumerate(served_at, 1):
        if (k := bisect.bisect_left(published.negatives, n)) < len(published.negatives):
            count("negative", decided_s, published.at_s[k] + refresh_s / 2)
    learn_delay = {
        kind: {
            "count": len(seconds),
            "median_s": round(statistics.median(seconds), 3),
            "p90_s": round(_quantile(seconds, 0.9), 3),
            "median_decisions": statistics.median(decisions),
            "p90_decisions": _quantile([float(d) for d in decisions], 0.9),
        }
        for kind, (seconds, decisions) in delays.items()
        if seconds
    }
    return ServiceRun(
        rewards, wall_s, len(order) / wall_s, len(versions), learn_delay, max(lags), lag, fallbacks, dict(env)
    )


@dataclass
class _Published:
    """The model versions the learner published, polled between decisions: when each was published, and
    how many negatives its actions had learned (their observations), that is, how many served decisions
    it had read. A version replaced before a poll is missed, which can only make a delay look longer."""

    store: redis.Redis
    version: str | None = None
    at_s: list[float] = field(default_factory=list)
    negatives: list[int] = field(default_factory=list)

    def poll(self) -> None:
        if self.store.get(keys.MODEL_VERSION) in (None, self.version):
            return
        text = self.store.get(keys.MODEL)
        if text is None:
            return
        snapshot = Snapshot.from_json(str(text))
        self.version = snapshot.version
        self.at_s.append(snapshot.published_ms / 1000)
        self.negatives.append(sum(m.observations for m in snapshot.actions.values()))


def _wait_for_learner(store: redis.Redis) -> None:
    """Until the learner runs: ``nba serve`` is ready before its learner has started."""
    deadline = time.monotonic() + 30
    while not store.exists(keys.LEARNER_LOCK) or _learner_lag(store) < 0:
        if time.monotonic() > deadline:
            raise SystemExit("the learner did not start within 30 s")
        time.sleep(0.1)


def _learner_lag(store: redis.Redis) -> int:
    """Decisions the learner has not yet published as learned, read or not; -1 before its consumer group
    exists."""
    try:
        groups: Any = store.xinfo_groups(keys.DECISION_LOG)
    except redis.ResponseError:  # no stream yet
        return -1
    if not groups:
        return -1
    position: Any = store.hget(keys.LEARNER_READ, keys.DECISION_LOG) or "0"
    unread: Any = store.xrange(keys.DECISION_LOG, f"({position}", "+")
    return len(unread)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- Vowpal Wabbit, in process -------------------------------------------------------------------------


def run_vw(data: Data, order: Sequence[int], args: str, seed: int, delay: int = 0) -> list[int]:
    """VW over the stream: predict a distribution, draw from it, learn the cost of what was drawn (after
    ``delay`` more examples: 0 learns before the next one)."""
    try:
        import vowpalwabbit
    except ImportError:
        raise SystemExit("Vowpal Wabbit is not installed: pip install -e '.[bench]'") from None
    vw = vowpalwabbit.Workspace(f"{args} --quiet --random_seed {seed}", enable_logging=False)
    rng = random.Random(seed)
    actions = [f"|A c{k}" for k in range(data.n_classes)]
    waiting: list[list[str]] = []
    rewards: list[int] = []
    try:
        for row in order:
            shared = "shared |S " + " ".join(f"f{j}:{v:.9g}" for j, v in enumerate(data.x[row]) if v != 0)
            pmf = vw.predict([shared, *actions])
            chosen = _sample(pmf, rng)
            reward = int(chosen == data.y[row])
            rewards.append(reward)
            labelled = [shared, *actions]
            labelled[1 + chosen] = f"0:{-reward}:{pmf[chosen]} {actions[chosen]}"
            waiting.append(labelled)
            if len(waiting) > delay:
                vw.learn(waiting.pop(0))
    finally:
        vw.finish()
    return rewards


def _sample(pmf: Sequence[float], rng: random.Random) -> int:
    at, cumulative = rng.random() * sum(pmf), 0.0
    for k, p in enumerate(pmf):
        cumulative += p
        if at < cumulative:
            return k
    return len(pmf) - 1


def exploration_seed(seed: int, repeat: int) -> int:
    """The random draws of repetition ``repeat`` over the stream of ``seed``."""
    return seed * 1000 + repeat


def tune_vw(data: Data, seed: int, passes: int) -> list[dict[str, Any]]:
    """Every setting of ``VW_GRID`` on the tuning streams (seeds ``seed + 1`` ..), each run
    ``TUNING_REPEATS`` times with other random draws; best mean first."""
    streams = [(seed + s, stream_order(len(data.y), seed + s, passes)) for s in range(1, TUNING_SEEDS + 1)]
    results = []
    for args in VW_GRID:
        finals = [
            round(sum(run_vw(data, order, args, exploration_seed(s, k))) / len(order), 4)
            for s, order in streams
            for k in range(TUNING_REPEATS)
        ]
        results.append({"args": args, "mean": round(statistics.mean(finals), 4), "runs": finals})
    return sorted(results, key=lambda r: -float(r["mean"]))


# --- the service's own learner, replayed in process ----------------------------------------------------


@dataclass
class Replica:
    """The service's learning loop without HTTP, Redis or clocks: the same vectors and centring
    (models/vectorize.py), the same river model and way of learning (models/learner.py: each served action
    a negative when its decision is read, a click a positive on top of it), the same scorer with its
    prior blend (models/snapshot.py), and the same arbitration and exploration (policies/). What a
    decision teaches reaches the scorer ``delay`` decisions after it (0: before the next decision).

    One thing at a time can be changed:

    - ``zeros_at_close``: no fake negatives, as the learner was before 0b3d4ab: a click is learned as a
      positive ``delay`` decisions later, a miss as a zero ``zeros_at_close`` decisions later (when its
      window closed), and the model estimates the chance itself (no ``from_model``);
    - ``centred``: ``False`` learns on the raw vectors, as before 0b3d4ab;
    - ``learning_rate``: AdaGrad's (``models.learner.LEARNING_RATE``);
    - ``intercept_lr``: the intercept's step (river's default, 0.01, as shipped: the intercept is the one
      weight that plain SGD moves);
    - ``prior_weight``: the prior blend's (``models.snapshot.PRIOR_WEIGHT``; 0 turns it off);
    - ``capped``: ``False`` maps a model's estimate back with ``q / (1 - q)`` above ``q = 1/2`` too,
      where ``models.snapshot.from_model`` says 1 for every such action;
    - ``scale_context``: a proposal: numeric context scaled after centring, never up: ``"each"``
      feature by ``1 / sqrt(max(variance, 1))``, or all of them ``"together"`` by ``1 / sqrt(max(total
      variance, 1))``, as the service scales its own features (``Centre.scale``).
    """

    epsilon: float
    delay: int = 0
    zeros_at_close: int | None = None
    centred: bool = True
    learning_rate: float = LEARNING_RATE
    intercept_lr: float | None = None
    prior_weight: float = PRIOR_WEIGHT
    scale_context: Literal["each", "together"] | None = None
    capped: bool = True


@contextlib.contextmanager
def _patched(module: Any, **values: Any) -> Iterator[None]:
    """Some of ``module``'s globals set to ``values`` for a while: where the service reads what a replica
    changes from a module constant."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def _context_scales(centre: Centre, how: Literal["each", "together"] | None) -> dict[str, float]:
    """``Replica.scale_context``: the factor of each numeric context feature (none: 1)."""
    if how is None:
        return {}
    numeric = {n: v for n, v in centre.variances.items() if not is_ours(n) and "=" not in n}
    if how == "together":
        scale = 1.0 / math.sqrt(max(sum(numeric.values()), 1.0))
        return dict.fromkeys(numeric, scale)
    return {name: 1.0 / math.sqrt(max(variance, 1.0)) for name, variance in numeric.items()}


def run_replica(data: Data, order: Sequence[int], folder: Path, replica: Replica, seed: int) -> list[int]:
    import models.learner as learner_module
    import models.snapshot as snapshot_module

    catalogue: Catalogue = load(folder, ())
    ranked = catalogue.by_placement[PLACEMENT]
    exploration = catalogue.exploration.model_copy(update={"epsilon": replica.epsilon})
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    # A customer seen for the first time, as the decision log records it (no zeros, no never).
    seen = {
        k: v
        for k, v in features(None, now_ms).items()
        if k == "stage"
        or (v != NEVER if k.startswith("days_since_") else v not in (0, False, frozenset(), {}))
    }
    fake_negatives = replica.zeros_at_close is None
    with _patched(learner_module, LEARNING_RATE=replica.learning_rate):
        models = {
            a.id: _regression(logit(to_model(a.spec.prior) if fake_negatives else a.spec.prior))
            for a in ranked
        }
    if replica.intercept_lr is not None:
        for model in models.values():
            model.intercept_lr = optim.schedulers.Constant(replica.intercept_lr)
    counts = {a.id: [0, 0] for a in ranked}  # observations (what the prior blend counts), positives
    centre = Centre()
    # (due at, decided at, what: "read", "positive" or "zero", action, the decision's vector)
    due: list[tuple[int, int, str, str, dict[str, float]]] = []
    rewards: list[int] = []
    scorer = LinearScorer()

    def learn(action_id: str, x: Mapping[str, float], positive: bool) -> None:
        if replica.centred:
            scales = _context_scales(centre, replica.scale_context)
            x = {k: v * scales.get(k, 1.0) for k, v in centre.centred(x).items()}
        models[action_id].learn_one(x, positive)
        # With fake negatives, the observations are the negatives (one per served action); without, every
        # example learned.
        counts[action_id][0] += int(not (fake_negatives and positive))
        counts[action_id][1] += int(positive)

    def snapshot(t: int) -> Snapshot:
        scales = _context_scales(centre, replica.scale_context) if replica.centred else {}
        frozen = {
            a: ActionModel(
                weights={k: w * scales.get(k, 1.0) for k, w in model._weights.items()},
                intercept=float(model.intercept),
                observations=counts[a][0],
                positives=counts[a][1],
            )
            for a, model in models.items()
        }
        shipped = Centre(dict(centre.means), dict(centre.variances), centre.count)
        return Snapshot(f"r-{t}", now_ms, frozen, shipped if replica.centred else Centre())

    patches: dict[str, Any] = {"PRIOR_WEIGHT": replica.prior_weight}
    if not fake_negatives:
        patches["from_model"] = lambda p: p
    elif not replica.capped:
        patches["from_model"] = lambda q: q / (1.0 - min(q, 1.0 - 1e-12))
    with _patched(snapshot_module, **patches):
        for t, row in enumerate(order):
            learned = False
            while due and due[0][0] <= t:
                _, _, what, action_id, x = due.pop(0)
                if what == "read":  # the decision read: the centre moves, its negative is learned
                    centre.update(x)
                    if fake_negatives:
                        learn(action_id, x, False)
                        learned = True
                else:
                    learn(action_id, x, what == "positive")
                    learned = True
            if learned:
                scorer = LinearScorer(snapshot(t))
            ctx = context(data, row)
            propensity = scorer.for_situation(seen, ctx, PLACEMENT, now_ms)
            priorities = [priority(a, propensity(a), ctx) for a in ranked]
            [(pick, _)] = draw(priorities, exploration, 1, rng)
            action_id = ranked[pick].id
            positive = action_id == f"class_{data.y[row]}"
            rewards.append(int(positive))
            x = vector(seen, ctx, PLACEMENT, now_ms)
            events = [("read", replica.delay)]
            if positive:
                events.append(("positive", replica.delay))
            elif replica.zeros_at_close is not None:
                events.append(("zero", replica.zeros_at_close))
            for what, delay in events:  # in this order when due at once: the read, then the click
                bisect.insort(due, (t + delay, t, what, action_id, x), key=lambda e: (e[0], e[1]))
    return rewards


def _before_0b3d4ab(epsilon: float, delay: int = 0, zeros_at_close: int = 0) -> Replica:
    """The learner before 0b3d4ab: zeros learned as zeros when their window closed, not centred, AdaGrad
    0.1 (the vector was the same: the bench's context is numeric, which is not crossed)."""
    return Replica(epsilon, delay=delay, zeros_at_close=zeros_at_close, centred=False, learning_rate=0.1)


def ablations(
    data: Data,
    order: Sequence[int],
    folder: Path,
    epsilon: float,
    seed: int,
    repeats: int,
    run: ServiceRun | None,
) -> dict[str, dict[str, Any]]:
    """Final progressive rewards of in-process replays on the stream, one change at a time, each run
    ``repeats`` times (the same random draws for every variant): their mean and standard deviation.
    Given a service run, some replays learn as late as it did: its median delays in decisions."""
    raw = load_data(data.name, standardize=False)
    shipped = Replica(epsilon)
    replicas: dict[str, tuple[Replica, Data]] = {
        "replica as shipped, learning before the next decision": (shipped, data)
    }
    vws: dict[str, tuple[str, int, Data]] = {f"VW ({VW_ARGS})": (VW_ARGS, 0, data)}
    if run is not None:
        late = int(run.learn_delay.get("positive", {}).get("median_decisions", 0))
        zero = int(run.learn_delay.get("zero_joined", {}).get("median_decisions", 0))
        replicas |= {
            f"replica as shipped, learning {late} decisions late (the run's)": (
                Replica(epsilon, delay=late),
                data,
            ),
            f"replica, zeros learned at the window close: clicks {late}, zeros {zero} decisions late": (
                Replica(epsilon, delay=late, zeros_at_close=zero),
                data,
            ),
            f"replica of the learner before 0b3d4ab (zeros at the close, not centred, AdaGrad 0.1), "
            f"clicks {late}, zeros {zero} decisions late": (
                _before_0b3d4ab(epsilon, late, zero),
                data,
            ),
        }
        vws[f"VW ({VW_ARGS}), learning {late} decisions late"] = (VW_ARGS, late, data)
    replicas |= {
        # each change of 0b3d4ab undone alone
        "replica, zeros learned as zeros (no fake negatives)": (Replica(epsilon, zeros_at_close=0), data),
        "replica, not centred": (Replica(epsilon, centred=False), data),
        "replica, AdaGrad 0.1": (Replica(epsilon, learning_rate=0.1), data),
        # each change of 0b3d4ab made alone
        "replica of the learner before 0b3d4ab (zeros as zeros, not centred, AdaGrad 0.1)": (
            _before_0b3d4ab(epsilon),
            data,
        ),
        "replica before 0b3d4ab, with fake negatives": (
            Replica(epsilon, centred=False, learning_rate=0.1),
            data,
        ),
        "replica before 0b3d4ab, centred": (Replica(epsilon, zeros_at_close=0, learning_rate=0.1), data),
        "replica before 0b3d4ab, AdaGrad 0.3": (Replica(epsilon, zeros_at_close=0, centred=False), data),
        # the rest, on the learner as shipped
        "replica, AdaGrad 0.03": (Replica(epsilon, learning_rate=0.03), data),
        "replica, the intercept's step 0.3 (a proposal)": (Replica(epsilon, intercept_lr=0.3), data),
        "replica, q / (1 - q) not capped at 1 (a proposal)": (Replica(epsilon, capped=False), data),
        "replica, prior blend off (PRIOR_WEIGHT 0)": (Replica(epsilon, prior_weight=0.0), data),
        **{f"replica, epsilon {e}": (Replica(e), data) for e in (0.01, 0.02, 0.05, 0.1) if e != epsilon},
        "replica, numeric context scaled each (a proposal)": (Replica(epsilon, scale_context="each"), data),
        "replica, numeric context scaled together (a proposal)": (
            Replica(epsilon, scale_context="together"),
            data,
        ),
        "replica, features not standardized": (shipped, raw),
        "replica, features not standardized, numeric context scaled each (a proposal)": (
            Replica(epsilon, scale_context="each"),
            raw,
        ),
        "replica, features not standardized, numeric context scaled together (a proposal)": (
            Replica(epsilon, scale_context="together"),
            raw,
        ),
        "replica of the learner before 0b3d4ab, features not standardized": (
            _before_0b3d4ab(epsilon),
            raw,
        ),
    }
    vws[f"VW ({VW_ARGS}), features not standardized"] = (VW_ARGS, 0, raw)
    finals: dict[str, list[float]] = {name: [] for name in [*replicas, *vws]}
    for k in range(repeats):
        draws = exploration_seed(seed, k)
        for name, (replica, over) in replicas.items():
            finals[name].append(round(sum(run_replica(over, order, folder, replica, draws)) / len(order), 4))
        for name, (args, delay, over) in vws.items():
            finals[name].append(round(sum(run_vw(over, order, args, draws, delay=delay)) / len(order), 4))
    return {name: _summary(f) for name, f in finals.items()}


def _summary(finals: Sequence[float]) -> dict[str, Any]:
    sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
    return {"mean": round(statistics.mean(finals), 4), "sd": round(sd, 4), "runs": list(finals)}


# --- the rest ------------------------------------------------------------------------------------------


def ceiling(data: Data, seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    model = LogisticRegression(max_iter=5000)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    cv = cross_val_score(model, data.x, data.y, cv=folds)
    in_sample = model.fit(data.x, data.y).score(data.x, data.y)
    return {"cross_validated": round(float(cv.mean()), 4), "in_sample": round(float(in_sample), 4)}


def plot(
    path: Path,
    curves: Mapping[str, Sequence[Sequence[float]]],
    ceilings: Mapping[str, float],
    title: str,
) -> None:
    """Each curve's mean over its runs, shaded between its lowest and highest run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, runs in curves.items():
        matrix = np.array(runs)
        mean = matrix.mean(axis=0)
        x = np.arange(1, matrix.shape[1] + 1)
        label = f"{name}: {mean[-1]:.3f}" + (f" (mean of {len(runs)} runs)" if len(runs) > 1 else "")
        (line,) = ax.plot(x, mean, label=label)
        if len(runs) > 1:
            ax.fill_between(x, matrix.min(axis=0), matrix.max(axis=0), color=line.get_color(), alpha=0.15)
    for (name, value), style in zip(ceilings.items(), ("--", ":"), strict=False):
        ax.axhline(value, color="grey", linestyle=style, label=f"{name}: {value:.3f}")
    ax.set_xlabel("examples of the stream")
    ax.set_ylabel("progressive reward (mean reward so far)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _code_version() -> dict[str, Any]:
    """The commit measured, and the service's files that differ from it (uncommitted work)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        changed = git("status", "--porcelain", "app", "models", "policies", "feature_store").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown"}
    return {"commit": commit, "uncommitted": [line[3:] for line in changed]}


def _sampled(curve: Sequence[float], points: int = 60) -> list[float]:
    step = max(1, math.ceil(len(curve) / points))
    return [round(curve[i], 4) for i in [*range(step - 1, len(curve) - 1, step), len(curve) - 1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument("--passes", type=int, default=2, help="passes over the data set (each reshuffled)")
    parser.add_argument("--seed", type=int, default=0, help="the stream's order (and the random draws)")
    parser.add_argument("--epsilon", type=float, help="the service's epsilon (default: the catalogue's)")
    parser.add_argument("--rate", type=float, default=40.0, help="decisions per second; 0: unpaced")
    parser.add_argument("--publish-s", type=float, help="NBA_LEARNER_PUBLISH_S (default: the service's, 1)")
    parser.add_argument("--refresh-s", type=float, help="NBA_MODEL_REFRESH_S (default: the service's, 0.5)")
    parser.add_argument("--repeats", type=int, default=1, help="service runs over the stream (~95 s each)")
    parser.add_argument("--vw-repeats", type=int, default=10, help="VW runs over the stream (~1 s each)")
    parser.add_argument("--tune", action="store_true", help="search VW's settings on other seeds first")
    parser.add_argument("--skip-service", action="store_true", help="only the in-process runs")
    parser.add_argument("--ablations", action="store_true", help="replays of the service's learner")
    parser.add_argument("--ablation-repeats", type=int, default=5, help="runs of each replay (~3 s each)")
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-png", type=Path)
    args = parser.parse_args()
    started, code = time.monotonic(), _code_version()
    data = load_data(args.dataset)
    order = stream_order(len(data.y), args.seed, args.passes)
    figures: dict[str, Any] = {
        "dataset": data.name,
        "rows": len(data.y),
        "features": int(data.x.shape[1]),
        "classes": data.n_classes,
        "passes": args.passes,
        "seed": args.seed,
        "examples": len(order),
    }
    vw_args, vw_greedy_args = VW_ARGS, VW_EPSILON_GREEDY_ARGS
    if args.tune:
        tuning = tune_vw(data, args.seed, args.passes)
        vw_args = tuning[0]["args"]
        vw_greedy_args = next(
            r["args"] for r in tuning if "--epsilon" in r["args"] and "cb_type" not in r["args"]
        )
        figures["vw_tuning"] = {
            "seeds": [args.seed + s for s in range(1, TUNING_SEEDS + 1)],
            "repeats": TUNING_REPEATS,
            "results": tuning,
        }
    runs: dict[str, list[list[int]]] = {"service": []}
    clock = time.monotonic()
    for name, vw in (("VW", vw_args), ("VW epsilon-greedy", vw_greedy_args)):
        runs[name] = [run_vw(data, order, vw, exploration_seed(args.seed, k)) for k in range(args.vw_repeats)]
    vw_s = time.monotonic() - clock
    settings = {"NBA_LEARNER_PUBLISH_S": args.publish_s, "NBA_MODEL_REFRESH_S": args.refresh_s}
    env = {name: str(value) for name, value in settings.items() if value is not None}
    services: list[ServiceRun] = []
    with bandit_catalogue(data, args.epsilon) as (folder, epsilon):
        if not args.skip_service:
            services = [
                run_service(data, order, folder, rate=args.rate, env=env) for _ in range(args.repeats)
            ]
            runs["service"] = [service.rewards for service in services]
        rng = random.Random(args.seed)
        runs["random"] = [[int(rng.randrange(data.n_classes) == data.y[row]) for row in order]]
        if args.ablations:
            figures["ablations"] = {
                "repeats": args.ablation_repeats,
                "results": ablations(
                    data,
                    order,
                    folder,
                    epsilon,
                    args.seed,
                    args.ablation_repeats,
                    services[0] if services else None,
                ),
            }
    ceilings = ceiling(data, args.seed)
    curves = {name: [progressive(r) for r in rewards] for name, rewards in runs.items() if rewards}
    finals = {name: _summary([round(c[-1], 4) for c in runs_]) for name, runs_ in curves.items()}
    figures["progressive_reward"] = {name: f["mean"] for name, f in finals.items()}
    figures["runs"] = finals
    last = min(1000, len(order))
    figures[f"reward_last_{last}"] = {
        name: _summary([round(sum(r[-last:]) / last, 4) for r in rewards])
        for name, rewards in runs.items()
        if rewards
    }
    figures["random_expected"] = round(1 / data.n_classes, 4)
    figures["ceiling_logistic_regression"] = ceilings
    figures["vw"] = {"args": vw_args, "epsilon_greedy_args": vw_greedy_args, "wall_s": round(vw_s, 1)}
    if services:
        figures["service"] = {
            "epsilon": epsilon,
            "rate_per_s": args.rate,
            "env": env,
            "runs": [
                {
                    "decisions_per_s": round(service.decisions_per_s, 1),
                    "wall_s": round(service.wall_s, 1),
                    "model_versions_seen": service.model_versions,
                    "learn_delay": service.learn_delay,
                    "learner_lag_max": service.learner_lag_max,
                    "learner_lag_at_end": service.learner_lag_at_end,
                    "fallbacks": service.fallbacks,
                }
                for service in services
            ],
        }
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    figures["code"] = code
    if (code_at_end := _code_version()) != code:  # someone changed the service's code during the run
        figures["code_at_end"] = code_at_end
    figures["wall_s"] = round(time.monotonic() - started, 1)
    figures["curves"] = {
        name: _sampled(np.array(runs_).mean(axis=0).tolist()) for name, runs_ in curves.items()
    }
    line = json.dumps(figures)
    print(line)
    if args.out_json:
        args.out_json.write_text(line + "\n")
    if args.out_png:
        title = (
            f"{data.name}: {len(order)} examples ({args.passes} passes), {data.n_classes} actions, "
            f"seed {args.seed}"
        )
        names = {"cross_validated": "logistic regression, cross-validated", "in_sample": "in sample"}
        plot(args.out_png, curves, {names[k]: v for k, v in ceilings.items()}, title)


if __name__ == "__main__":
    main()
