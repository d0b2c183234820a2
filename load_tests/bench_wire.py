"""Two revisions' decisions on the wire, side by side: ``python -m load_tests.bench_wire --compare A B``.

What a change to the hot path buys on the wire is a few percent of a decision, and this machine's speed
moves by more than that from one minute to the next (docs/performance.md): two full runs, or two
servers measured one after the other, do not tell such a step from the machine's hour. Here both
revisions' services run at once, each from its own worktree with its own embedded Redis, pinned as the
benchmark pins one worker (load_tests/benchmark.py ``place``). After a warm-up of each (its customers
gain history, as in the benchmark's turns), wrk's closed loop of decisions goes to one and then the
other in short bursts, in the order A B B A A B ..., so that a slow minute weighs on both alike. Each
burst gives the worker's CPU time (user and system) per decision; the figures are each revision's
median, and the median of the pairs' differences with how many pairs went each way.

The service's own CPU, not its throughput: the throughput of a burst also moves with what wrk, Redis
and the learner get of the other core. Needs wrk (``apt-get install wrk``) and git.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from pathlib import Path

from load_tests.benchmark import DECIDE, Bench, Plan, check, place, process_ticks, running
from load_tests.service import worktrees

CONNECTIONS = 32  # as the benchmark's closed loops


def per_decision_us(bench: Bench, seconds: int) -> float:
    """One closed-loop burst of ``seconds``: the worker's CPU time per decision, in microseconds."""
    # Its own ticks rather than the cores Bench.wrk reports: those are rounded to a hundredth of a core,
    # a step of 1% where the differences sought are a few.
    worker = next(pid for pid, role in bench.roles.items() if role == "nba serve")
    before = process_ticks(worker)
    run, *_ = bench.wrk(0, seconds, CONNECTIONS, quiet_first=False)
    spent_s = (process_ticks(worker) - before) / os.sysconf("SC_CLK_TCK")
    return spent_s / (run.rate * seconds) * 1e6


def compare(trees: list[tuple[str, Path]], bursts: int, seconds: int, warmup_s: int) -> dict[str, object]:
    with contextlib.ExitStack() as stack:
        benches = []
        for rev, tree in trees:
            server = stack.enter_context(running(DECIDE, 1, cwd=tree))
            place(server.pid, 1)
            check(server, DECIDE)
            benches.append(Bench(server, DECIDE, Plan(), True, rev))
        for _ in range(2):  # in halves, each in turn: both servers' customers gain history alike
            for bench in benches:
                bench.wrk(0, max(1, warmup_s // 2), CONNECTIONS, quiet_first=False)
        figures: list[list[float]] = [[] for _ in trees]
        for burst in range(bursts):
            order = (0, 1) if burst % 2 == 0 else (1, 0)
            for i in order:
                figures[i].append(per_decision_us(benches[i], seconds))
                print(f"{trees[i][0]:>14} burst {burst + 1}: {figures[i][-1]:6.1f} us", file=sys.stderr)
    return summary([rev for rev, _ in trees], *figures)


def summary(revisions: list[str], a: list[float], b: list[float]) -> dict[str, object]:
    """The figures of the bursts of A and B, the n-th of each a pair."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    return {
        "revisions": revisions,
        "us_per_decision": [[round(x, 1) for x in got] for got in (a, b)],
        "median_us": [round(statistics.median(got), 1) for got in (a, b)],
        "ratio_of_medians": round(statistics.median(b) / statistics.median(a), 3),
        "median_difference_us": round(statistics.median(diffs), 1),
        "pairs_b_cheaper": sum(d < 0 for d in diffs),
        "pairs": len(diffs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), required=True, help="two git revisions")
    parser.add_argument("--bursts", type=int, default=10, help="bursts of each revision (default 10)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds of each burst (default 5)")
    parser.add_argument("--warm-up", type=int, default=40, help="seconds of warm-up of each (default 40)")
    args = parser.parse_args()
    with worktrees(args.compare) as trees:
        print(json.dumps(compare(trees, args.bursts, args.seconds, args.warm_up)))


if __name__ == "__main__":
    main()
