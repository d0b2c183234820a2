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
  context (``f0`` .. ``fN``); a correct choice is reported as a ``click`` (``POST /v1/outcomes``), which
  the learner learns at once; a wrong one is learned as a zero when its 1 s attribution window closes
  (and the learner's grace after it has passed).
  The calls are paced at ``--rate`` decisions per second, so that what is learned reaches the scorer
  within a bounded number of decisions;
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
``--ablations`` adds in-process replays of the service's own learner (the same vectors, the same river
model, scorer and exploration code) with one thing changed at a time, to tell what a gap is due to.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from river import linear_model, optim

from feature_store import keys
from feature_store.features import NEVER, features
from models.learner import CLOSE_GRACE_MS, _regression
from models.snapshot import PRIOR_WEIGHT, ActionModel, LinearScorer, Snapshot, logit
from models.vectorize import vector
from policies.catalogue import Catalogue, load
from policies.exploration import draw

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
        start = time.monotonic()
        for t, row in enumerate(order):
            if rate > 0 and (ahead := start + t / rate - time.monotonic()) > 0:
                time.sleep(ahead)
            body = {"customer_id": f"bandit-{t}", "placement": PLACEMENT, "context": context(data, row)}
            if t % 100 == 0:
                lags.append(_learner_lag(store))
            decided_at.append(time.time())
            answer = client.post("/v1/decide", json=body)
            assert answer.status_code == 200, answer.text
            decision = answer.json()
            if decision["fallback"]:  # out of its time budget: nothing chosen, nothing to learn
                fallbacks += 1
                rewards.append(0)
                continue
            assert len(decision["actions"]) == 1, decision
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
            time.sleep(0.2)
        time.sleep(float(env.get("NBA_LEARNER_PUBLISH_S", "1")) + 0.5)
        learned = store.xrange(keys.REWARDS)
    # How long until what a decision earned could be scored with: from the decision to the publish of the
    # snapshot holding it (the reward entry's id is its publish time), plus half a worker refresh on
    # average; and how many decisions were made meanwhile.
    delays: dict[str, tuple[list[float], list[int]]] = {"positive": ([], []), "zero": ([], [])}
    for entry_id, fields in learned:
        published_s = int(entry_id.split("-")[0]) / 1000 + refresh_s / 2
        decided_s = int(fields["time_ms"]) / 1000
        seconds, decisions = delays["positive" if fields["positive"] == "1" else "zero"]
        seconds.append(published_s - decided_s)
        decisions.append(bisect.bisect(decided_at, published_s) - bisect.bisect(decided_at, decided_s))
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


def _wait_for_learner(store: redis.Redis) -> None:
    """Until the learner runs: ``nba serve`` is ready before its learner has started."""
    deadline = time.monotonic() + 30
    while not store.exists(keys.LEARNER_LOCK) or _learner_lag(store) < 0:
        if time.monotonic() > deadline:
            raise SystemExit("the learner did not start within 30 s")
        time.sleep(0.1)


def _learner_lag(store: redis.Redis) -> int:
    """Decisions not yet acknowledged by the learner; -1 before its consumer group exists."""
    try:
        groups: Any = store.xinfo_groups(keys.DECISION_LOG)
    except redis.ResponseError:  # no stream yet
        return -1
    for group in groups:
        return int(group.get("pending", 0)) + int(group.get("lag", 0) or 0)
    return -1


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- Vowpal Wabbit, in process -------------------------------------------------------------------------


def run_vw(data: Data, order: Sequence[int], args: str, seed: int, delay: int = 0) -> list[int]:
    """VW over the stream: predict a distribution, draw from it, learn the cost of what was drawn (after
    ``delay`` more examples: 0 learns before the next one)."""
    try:
        import vowpalwabbit  # type: ignore[import-untyped]  # no stubs, no py.typed
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
    """The service's learning loop without HTTP, Redis or clocks: the same vectors (models/vectorize.py),
    the same river model (models/learner.py), the same scorer with its prior blend (models/snapshot.py)
    and the same exploration draw (policies/exploration.py), with what is learned reaching the scorer
    ``delay_positive`` / ``delay_zero`` decisions later. One thing at a time can be changed.

    ``fake_negatives``: a way of learning the service does not have (yet): every decision is learned as
    a zero as soon as it is read (``delay_positive`` later), and a click as a positive on top of it, so
    that nothing waits for a window to close. The model then estimates p / (1 + p) rather than p, which
    ranks the actions the same way."""

    epsilon: float
    regression: Callable[[float], Any] = _regression
    prior_weight: float = PRIOR_WEIGHT
    delay_positive: int = 0
    delay_zero: int = 0
    fake_negatives: bool = False


def run_replica(data: Data, order: Sequence[int], folder: Path, replica: Replica, seed: int) -> list[int]:
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
    models = {a.id: replica.regression(logit(a.spec.prior)) for a in ranked}
    counts = {a.id: [0, 0] for a in ranked}
    frozen: dict[str, ActionModel] = {}
    due: list[tuple[int, int, str, dict[str, float], bool]] = []
    rewards: list[int] = []
    saved = snapshot_module.PRIOR_WEIGHT
    snapshot_module.PRIOR_WEIGHT = replica.prior_weight  # type: ignore[misc]
    try:
        for t, row in enumerate(order):
            learned = False
            while due and due[0][0] <= t:
                _, _, action_id, x, positive = due.pop(0)
                models[action_id].learn_one(x, positive)
                counts[action_id][0] += 1
                counts[action_id][1] += int(positive)
                frozen[action_id] = ActionModel(
                    weights=dict(models[action_id]._weights),
                    intercept=float(models[action_id].intercept),
                    observations=counts[action_id][0],
                    positives=counts[action_id][1],
                )
                learned = True
            if learned or t == 0:
                scorer = LinearScorer(Snapshot(f"r-{t}", now_ms, dict(frozen)))
            ctx = context(data, row)
            priorities = [
                scorer.propensity(a, seen, ctx, PLACEMENT, now_ms) * a.spec.value * a.spec.levers
                for a in ranked
            ]
            [(pick, _)] = draw(priorities, exploration, 1, rng)
            action_id = ranked[pick].id
            positive = action_id == f"class_{data.y[row]}"
            rewards.append(int(positive))
            x = vector(seen, ctx, PLACEMENT, now_ms)
            if replica.fake_negatives:
                learn = [
                    (replica.delay_positive, False),
                    *([(replica.delay_positive, True)] if positive else []),
                ]
            else:
                learn = [(replica.delay_positive if positive else replica.delay_zero, positive)]
            for delay, label in learn:  # in this order when due at once: the zero, then the click
                bisect.insort(due, (t + delay, t, action_id, x, label), key=lambda e: (e[0], e[1]))
    finally:
        snapshot_module.PRIOR_WEIGHT = saved  # type: ignore[misc]
    return rewards


def _sgd(lr: float, intercept_lr: float = 0.01) -> Callable[[float], Any]:
    def make(intercept: float) -> Any:
        return linear_model.LogisticRegression(
            optimizer=optim.SGD(lr), l2=1e-4, intercept_init=intercept, intercept_lr=intercept_lr
        )

    return make


def _adagrad(lr: float) -> Callable[[float], Any]:
    def make(intercept: float) -> Any:
        return linear_model.LogisticRegression(
            optimizer=optim.AdaGrad(lr), l2=1e-4, intercept_init=intercept, intercept_lr=lr
        )

    return make


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
    ``repeats`` times (the same random draws for every variant): their mean and standard deviation."""
    raw = load_data(data.name, standardize=False)
    replicas: dict[str, tuple[Replica, Data]] = {
        "replica as shipped, learning before the next decision": (Replica(epsilon), data)
    }
    vws: dict[str, tuple[str, int, Data]] = {f"VW ({VW_ARGS})": (VW_ARGS, 0, data)}
    if run is not None:
        positive = int(run.learn_delay.get("positive", {}).get("median_decisions", 0))
        zero = int(run.learn_delay.get("zero", {}).get("median_decisions", 0))
        delayed = Replica(epsilon, delay_positive=positive, delay_zero=zero)
        replicas[f"replica as shipped, positives {positive} and zeros {zero} decisions late (the run's)"] = (
            delayed,
            data,
        )
        # What the learner's grace after each window (CLOSE_GRACE_MS) costs: zeros learned that much sooner.
        grace = min(zero, round(CLOSE_GRACE_MS / 1000 * run.decisions_per_s))
        early = Replica(epsilon, delay_positive=positive, delay_zero=zero - grace)
        replicas[f"replica, positives {positive} and zeros {zero - grace} decisions late (no grace)"] = (
            early,
            data,
        )
        vws[f"VW ({VW_ARGS}), learning {zero} decisions late"] = (VW_ARGS, zero, data)
        fake = Replica(epsilon, delay_positive=positive, fake_negatives=True)
        replicas[
            f"replica, fake negatives: every decision a zero {positive} decisions late, clicks on top"
        ] = (
            fake,
            data,
        )
    sgd = Replica(epsilon, regression=_sgd(0.05))
    replicas |= {
        "replica, prior blend off (PRIOR_WEIGHT 0)": (Replica(epsilon, prior_weight=0.0), data),
        "replica, plain SGD 0.05 (the learner before AdaGrad)": (sgd, data),
        "replica, AdaGrad 0.03": (Replica(epsilon, regression=_adagrad(0.03)), data),
        "replica, AdaGrad 0.3": (Replica(epsilon, regression=_adagrad(0.3)), data),
        **{f"replica, epsilon {e}": (Replica(e), data) for e in (0.01, 0.02, 0.05, 0.1) if e != epsilon},
        "replica, features not standardized": (Replica(epsilon), raw),
        "replica, plain SGD 0.05, features not standardized": (sgd, raw),
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
