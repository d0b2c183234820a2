"""The benchmark's pure parts (load_tests/benchmark.py): reading wrk's figures, judging a run, the rate
search, the JSON's shape. No wrk, no server, no timing."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from load_tests.bench_wire import summary as wire_summary
from load_tests.benchmark import (
    DECIDE,
    DURING_INGESTION,
    EVENTS,
    FLOOR,
    IN_TURN,
    WRK_SCRIPT,
    BenchmarkError,
    RedisState,
    WrkRun,
    bisect,
    bracket,
    cores_busy,
    cpu_ticks,
    flags,
    highest_under_budget,
    hopeless,
    paced_connections,
    pair,
    parse_wrk,
    plot,
    point,
    problems,
    ratios,
    redis_in_run,
    summary,
    targets,
)
from load_tests.service import worktrees

WRK_STDOUT = """Running 8s test @ http://127.0.0.1:40000
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms    0.80ms  12.00ms   90.00%
  8000 requests in 8.00s, 1.50MB read
Requests/sec:   1000.00
wrk-json: {"requests":8000,"duration_s":8.000000,"bytes":1572864,\
"errors":{"connect":0,"read":0,"write":0,"status":0,"timeout":0},"non_2xx":0,"statuses":{},"fallbacks":0,"incomplete":0,\
"latency_ms":{"p50":1.100,"p90":2.000,"p95":2.500,"p99":4.000,"max":12.000,"mean":1.200},\
"lag_ms":{"sends":8000,"p50":0.0,"p99":0.9,"max":1.500,"late_1ms":12,"late_5ms":0}}
"""


def wrk_run(**changes: Any) -> WrkRun:
    return replace(parse_wrk(WRK_STDOUT), **changes)


def paced(target: float, *, p99: float = 4.0, sustained: bool = True, p50: float = 1.0) -> dict[str, Any]:
    """A paced run as point() records it, at ``target`` per second."""
    run = wrk_run(
        requests=int(target * 8 * (1.0 if sustained else 0.5)),
        latency_ms={"p50": p50, "p90": p99, "p95": p99, "p99": p99, "max": p99 + 1, "mean": p50},
    )
    return point(run, DECIDE, target, 0.0, "ladder")


def test_parse_wrk_reads_the_line_paced_lua_prints() -> None:
    run = parse_wrk(WRK_STDOUT)
    assert run.requests == 8000
    assert run.rate == pytest.approx(1000.0)
    assert run.latency_ms["p99"] == 4.0
    assert run.lag_ms["late_1ms"] == 12
    assert run.socket_errors == 0


def test_parse_wrk_without_figures_is_an_error() -> None:
    with pytest.raises(BenchmarkError, match="no figures"):
        parse_wrk("Running 8s test @ http://127.0.0.1:40000\nunable to connect to 127.0.0.1:40000\n")


def test_paced_lua_prints_every_figure_parse_wrk_reads() -> None:
    printed = set(re.findall(r'"(\w+)":', WRK_SCRIPT.read_text()))
    assert set(json.loads(WRK_STDOUT.splitlines()[-1].removeprefix("wrk-json: "))) <= printed
    for scenario in (FLOOR, DECIDE, EVENTS):
        assert WRK_SCRIPT.with_name(f"{scenario.name}.lua").is_file()


def test_a_clean_run_has_no_problems_and_each_fault_is_named() -> None:
    assert problems(wrk_run(), None) == []
    assert problems(wrk_run(), 1000.0) == []
    assert problems(wrk_run(fallbacks=3), None) == ["3 fallbacks"]
    assert problems(wrk_run(non_2xx=2), None) == ["2 non-2xx answers"]
    assert problems(wrk_run(non_2xx=3, statuses={"503": 2, "504": 1}), None) == [
        "3 non-2xx answers (2 503, 1 504)"
    ]
    assert problems(wrk_run(incomplete=1), None) == ["1 batches not wholly accepted"]
    errors = {"connect": 0, "read": 4, "write": 0, "status": 0, "timeout": 1}
    assert problems(wrk_run(errors=errors), None) == ["socket errors: connect 0, read 4, write 0, timeout 1"]
    assert problems(wrk_run(requests=0), None)[0] == "no answers"


def test_a_paced_rate_is_sustained_only_if_achieved_and_sent_on_time() -> None:
    assert problems(wrk_run(), 1030.0) == []  # 1000/s of 1030/s is within 3%
    assert problems(wrk_run(), 1040.0) == ["achieved 1000.0/s of 1040/s"]
    late = wrk_run(
        lag_ms={"sends": 8000, "p50": 0.0, "p99": 7.5, "max": 30.0, "late_1ms": 900, "late_5ms": 200}
    )
    assert problems(late, 1000.0) == ["sends fell behind their slots: p99 7.5 ms late"]
    assert problems(late, None) == []  # a closed loop has no schedule
    slow = {"p50": 40.0, "p90": 60.0, "p95": 70.0, "p99": 200.0, "max": 300.0, "mean": 45.0}
    assert problems(replace(late, latency_ms=slow), 1000.0) == []  # 7.5 ms is under 5% of 200 ms


def test_point_shapes() -> None:
    closed = point(wrk_run(fallbacks=2), DECIDE, None, 0.04, "max")
    assert list(closed) == [
        "kind", "achieved_per_s", "latency_ms", "requests", "duration_s", "errors", "fallbacks", "clean",
        "problems", "other_cpu_cores",
    ]  # fmt: skip
    assert closed["clean"] is False
    assert closed["problems"] == ["2 fallbacks"]
    rate = point(wrk_run(), EVENTS, 1000.0, 0.0, "search")
    assert list(rate) == [
        "kind", "target_per_s", "achieved_per_s", "events_per_s", "latency_ms", "requests", "duration_s",
        "errors", "incomplete", "send_lag_ms", "sustained", "under_budget", "problems", "other_cpu_cores",
    ]  # fmt: skip
    assert rate["events_per_s"] == 500_000
    assert list(rate["latency_ms"]) == ["p50", "p95", "p99", "max"]
    assert rate["sustained"] is True
    assert rate["under_budget"] is True
    assert "fallbacks" not in point(wrk_run(), FLOOR, 1000.0, 0.0, "ladder")
    assert json.loads(json.dumps(rate)) == rate


def test_over_budget_is_sustained_but_does_not_pass() -> None:
    slow = paced(500, p99=12.0)
    assert slow["sustained"] is True
    assert slow["under_budget"] is False


def test_the_bracket_is_below_the_first_failure() -> None:
    ladder = [
        paced(100),
        paced(250),
        paced(400),
        paced(500, p99=11.0),
        paced(600),
        paced(750, sustained=False),
    ]
    assert bracket(ladder, 1000.0) == (400.0, 500.0)
    assert bracket([paced(100), paced(250)], 1000.0) == (250.0, 1000.0)
    assert bracket([paced(100, p99=20.0), paced(250)], 1000.0) == (0.0, 100.0)


def test_bisection_converges_on_the_highest_passing_rate() -> None:
    threshold = 737.0
    seen: list[float] = []

    def measure(rate: float) -> dict[str, Any]:
        seen.append(rate)
        return paced(rate, p99=5.0 if rate <= threshold else 15.0)

    best, tried = bisect(measure, 500.0, 1000.0, 6)
    assert len(tried) == len(seen) <= 6
    assert all(500 < rate < 1000 for rate in seen)
    assert best <= threshold < best + 500 / 2 ** len(tried) + 1
    assert highest_under_budget(tried, best) is not None
    assert highest_under_budget(tried, 0.0) is None


def test_bisection_stops_when_the_bracket_is_narrow() -> None:
    best, tried = bisect(lambda rate: paced(rate), 990.0, 1000.0, 4)
    assert (best, tried) == (990.0, [])


def scenario_figures(max_rate: float, *, clean: bool = True) -> dict[str, Any]:
    best = point(wrk_run(requests=int(max_rate * 8), fallbacks=0 if clean else 5), DECIDE, None, 0.0, "max")
    ladder = [paced(round(share * best["achieved_per_s"])) for share in (0.25, 0.5)]
    return {"max_throughput": best, "paced": ladder, "highest_rate_under_budget": ladder[-1]}


def test_ratios_targets_and_flags() -> None:
    one = {"floor": scenario_figures(4000), "decide": scenario_figures(2500, clean=False)}
    assert ratios({**one, "events": {"max_throughput": point(wrk_run(), EVENTS, None, 0.0, "max")}}) == {
        "decide_over_floor": 0.625,
        "events_per_s": 500_000,
    }
    one["events"] = {"error": "BenchmarkError: events: 503"}
    one["ratios"] = ratios(one)
    assert one["ratios"] == {"decide_over_floor": 0.625, "events_per_s": None}
    met = targets(one)
    assert met["decide_over_floor_at_least_0.5"] == {
        "value": 0.625,
        "from": "scenarios",
        "scenarios_apart": 0.625,
        "met": True,
    }
    assert met["decide_p99_under_10ms_at_half_its_max"]["rate_per_s"] == 1250
    assert met["decide_p99_under_10ms_at_half_its_max"]["met"] is True
    assert met["events_at_least_20000_per_s"]["met"] is False
    found = flags({"1": one})
    assert found == [
        "1 worker(s), decide, max throughput: 5 fallbacks",
        "1 worker(s), events: failed: BenchmarkError: events: 503",
    ]


def test_the_ratio_target_is_judged_by_the_closed_loops_in_turn_when_they_are_clean() -> None:
    one: dict[str, Any] = {"floor": scenario_figures(4000), "decide": scenario_figures(1600)}
    one["ratios"] = ratios(one)
    pairs = [(4000, 2400), (5000, 2400), (3000, 1800)]
    one[IN_TURN] = {
        "pairs": [
            pair(scenario_figures(f)["max_throughput"], scenario_figures(d)["max_throughput"])
            for f, d in pairs
        ],
        "decide_over_floor_median": 0.6,
    }
    assert targets(one)["decide_over_floor_at_least_0.5"] == {
        "value": 0.6,
        "from": IN_TURN,
        "scenarios_apart": 0.4,
        "met": True,
    }
    assert flags({"1": one}) == []
    assert summary({"workers": {"1": one}, "flags": []})["1w floor and decide in turn"] == {
        "decide_over_floor": [0.6, 0.48, 0.6],
        "median": 0.6,
        "floor_cpu_over_decide_cpu": [None, None, None],  # no cores recorded
    }
    one[IN_TURN]["pairs"][1]["decide"] = scenario_figures(2400, clean=False)["max_throughput"]
    assert targets(one)["decide_over_floor_at_least_0.5"]["from"] == "scenarios"
    assert targets(one)["decide_over_floor_at_least_0.5"]["met"] is False
    assert flags({"1": one}) == [f"1 worker(s), {IN_TURN}, decide in turn 2: 5 fallbacks"]
    one[IN_TURN] = {"error": "BenchmarkError: the floor did not start"}
    assert targets(one)["decide_over_floor_at_least_0.5"]["value"] == 0.4
    assert flags({"1": one}) == [f"1 worker(s), {IN_TURN}: failed: BenchmarkError: the floor did not start"]


def test_a_pair_compares_the_answering_processes_cpu_per_request() -> None:
    floor, decide = scenario_figures(5000)["max_throughput"], scenario_figures(2000)["max_throughput"]
    floor["server_cpu_cores"] = {"floor": 1.0, "wrk": 0.2}
    decide["server_cpu_cores"] = {"nba serve": 0.98, "redis-server": 0.4, "learner": 0.2, "wrk": 0.15}
    paired = pair(floor, decide)
    assert paired["decide_over_floor"] == 0.4
    assert paired["worker_us_per_request"] == {"floor": 200.0, "decide": 490.0}
    assert paired["floor_cpu_over_decide_cpu"] == 0.408
    # Two workers: the uvicorn workers answer, the parent only watches them.
    decide["server_cpu_cores"] = {"nba serve": 0.0, "uvicorn worker": 1.2, "redis-server": 0.4}
    assert pair(floor, decide)["worker_us_per_request"]["decide"] == 600.0


def test_a_pass_above_a_failure_is_flagged() -> None:
    figures = scenario_figures(4000)
    figures["paced"] = [paced(1000), paced(2000, p99=30.0), paced(3000)]
    assert flags({"1": {"decide": figures}}) == [
        "1 worker(s), decide: 2000/s failed but 3000/s passed (noise?); "
        "the search stayed below the first failure"
    ]


def test_each_cpu_is_as_busy_as_its_ticks_not_idle_or_waiting_on_io() -> None:
    before = (
        "cpu  30 0 30 200 0 0 0 0 0 0\ncpu0 10 0 10 100 0 0 0 0 0 0\ncpu1 20 0 20 100 0 0 0 0 0 0\nintr 5"
    )
    #            user nice system idle iowait irq softirq steal
    after = "cpu  0\ncpu0 40 0 20 140 10 10 0 0 0 0\ncpu1 120 0 20 100 0 0 0 0 0 0\nctxt 9"
    first, second = cpu_ticks(before), cpu_ticks(after)
    assert first == [(20, 120), (40, 140)]
    assert cores_busy(first, second) == [0.5, 1.0]  # cpu0: 50 of 100 (40 idle, 10 iowait); cpu1: all


def test_a_run_records_redis_s_forks_the_last_one_s_pause_and_its_memory() -> None:
    before = RedisState(forks=3, last_fork_ms=2.5, used_memory_mb=120.04)
    forked = RedisState(forks=4, last_fork_ms=8.26, used_memory_mb=180.06)
    assert redis_in_run(before, forked) == {
        "redis_forks": 1,
        "redis_fork_pause_ms": 8.3,
        "redis_used_memory_mb": 180.1,
    }
    # A pause from before the run is not the run's.
    unforked = replace(forked, forks=3)
    assert redis_in_run(before, unforked)["redis_fork_pause_ms"] is None
    assert redis_in_run(None, None) == {"redis_forks": None}  # the floor has no Redis


def test_paced_runs_use_fewer_connections_at_low_rates() -> None:
    assert [paced_connections(rate) for rate in (0.1, 1.2, 9.1, 31.5, 32, 500)] == [1, 3, 19, 63, 64, 64]


def test_no_search_when_even_the_median_at_the_lowest_rate_is_over_budget() -> None:
    assert hopeless([paced(100), paced(250, p99=20.0)]) is None
    assert hopeless([paced(1.2, p50=60.0, p99=90.0), paced(3.0, p50=70.0, p99=140.0)]) == (
        "the median at the lowest rate, 1.2/s, is 60 ms: over 10 ms, which no lower rate brings the p99 under"
    )


def test_the_plot_of_a_run_of_one_scenario_says_the_other_panel_was_not_measured(tmp_path: Path) -> None:
    """``--scenarios events`` alone: the left panel has no rate to put on a log scale (it used to fail)."""
    events = [point(wrk_run(), EVENTS, rate, 0.0, "ladder") for rate in (10.0, 20.0)]
    figures = {
        "workers": {"1": {"events": {"paced": events}}},
        "machine": {"cpu": "test CPU", "cores": 2},
        "date": "2026-11-22T00:00:00Z",
        "code": {"commit": "0123456789abcdef"},
    }
    out = tmp_path / "plot.png"
    plot(out, figures)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_instruction_counts_use_the_wire_benchmarks_batches(tmp_path: Path) -> None:
    """load_tests/bench_instructions.py: 500 events of 500 distinct customers in the shop mix, ids
    unique per batch; and the count it reads is callgrind's summary of the dump, not the final file's."""
    from load_tests.bench_instructions import _dumped, events_body

    first, second = (json.loads(events_body(n, 1_000))["events"] for n in (0, 1))
    assert len(first) == 500
    assert len({e["customer_id"] for e in first}) == 500
    assert {e["customer_id"] for e in first + second} <= {f"i-c-{i}" for i in range(1_000)}
    assert not {e["event_id"] for e in first} & {e["event_id"] for e in second}
    types = [e["type"] for e in first]
    assert (types.count("page_view"), types.count("add_to_cart")) == (250, 25)
    grouped = [e["customer_id"] for e in json.loads(events_body(0, 1_000, 5))["events"]]
    assert len(set(grouped)) == 100
    assert all(len(set(grouped[i : i + 5])) == 1 for i in range(0, 500, 5))

    out = tmp_path / "redis.callgrind"
    out.write_text("summary: 999\n")  # written at exit: everything, start-up included
    (tmp_path / "redis.callgrind.1").write_text("events: Ir\nsummary: 1234\ntotals: 1234\n")
    assert _dumped(out) == 1234


def test_decide_during_ingestion_is_flagged_only_when_it_failed() -> None:
    during = {
        "decide": point(wrk_run(), DECIDE, 1250.0, 0.0, "during_ingestion"),
        "events": point(wrk_run(), EVENTS, 20.0, 0.0, "beside"),
    }
    one = {"decide": scenario_figures(2500), DURING_INGESTION: during}
    assert flags({"1": one}) == []
    assert summary({"workers": {"1": {**one, "ratios": {}}}, "flags": []})["1w decide during ingestion"] == {
        "rate_per_s": 1250.0,
        "p50_ms": during["decide"]["latency_ms"]["p50"],
        "p99_ms": during["decide"]["latency_ms"]["p99"],
        "fallbacks": during["decide"]["fallbacks"],
        "events_per_s": during["events"]["events_per_s"],
    }
    one[DURING_INGESTION] = {"error": "BenchmarkError: decide: 503"}
    assert flags({"1": one}) == ["1 worker(s), decide_during_ingestion: failed: BenchmarkError: decide: 503"]


def test_the_wire_comparison_pairs_each_burst_of_a_with_the_same_burst_of_b() -> None:
    got = wire_summary(["a", "b"], [300.0, 320.0, 280.0, 310.0], [290.0, 330.0, 260.0, 300.0])
    assert got["median_us"] == [305.0, 295.0]
    assert got["ratio_of_medians"] == round(295 / 305, 3)
    assert got["median_difference_us"] == -10.0  # -10, +10, -20, -10
    assert (got["pairs_b_cheaper"], got["pairs"]) == (3, 4)
    with pytest.raises(ValueError, match="shorter"):
        wire_summary(["a", "b"], [1.0, 2.0], [1.0])  # a burst without its pair


def test_revisions_are_checked_out_side_by_side_and_removed_after() -> None:
    with worktrees(["HEAD", "HEAD"]) as trees:
        assert [rev for rev, _ in trees] == ["HEAD", "HEAD"]
        assert len({tree for _, tree in trees}) == 2
        for _, tree in trees:
            assert (tree / "app" / "services.py").is_file()
    assert not any(tree.exists() for _, tree in trees)
