"""How fast each candidate rule language evaluates one pre-compiled eligibility rule.

    pip install rule-engine cel-python   # the candidates that were not chosen
    python -m load_tests.bench_rules

Prints the median microseconds per evaluation of the same three-clause rule, compiled once, for
simpleeval (the language policies/rules.py uses), rule-engine and cel-python, measured in one run; and
for the closures policies/rules.py compiles such a rule into, which evaluate it as simpleeval does.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import timeit
from collections.abc import Callable

from feature_store.features import feature_names
from policies.rules import RuleScope, compile_rule

PROFILE = {"faq_view_30m": 3, "cart_items": 1, "purchased_24h": False}
RULE = "profile.faq_view_30m >= 2 and profile.cart_items > 0 and not profile.purchased_24h"


def _median_us(fn: Callable[[], object], number: int) -> float:
    runs = [timeit.timeit(fn, number=number) / number * 1e6 for _ in range(7)]
    return round(statistics.median(runs), 2)


def main() -> None:
    rule = compile_rule(RULE, feature_names())
    assert rule.evaluate(PROFILE, {}) is True
    assert rule.direct is not None
    scope = RuleScope(PROFILE, {})  # one per decision, shared by all its rules
    walked = dataclasses.replace(rule, direct=None)  # the same rule, left to simpleeval
    figures = {
        "closures, as simpleeval evaluates (policies/rules.py)": _median_us(lambda: scope.holds(rule), 5000),
        "simpleeval (chosen)": _median_us(lambda: scope.holds(walked), 5000),
    }
    try:
        import rule_engine

        compiled = rule_engine.Rule(RULE)
        data = {"profile": PROFILE}
        assert compiled.matches(data)
        figures["rule-engine"] = _median_us(lambda: compiled.matches(data), 1000)
    except ImportError:
        figures["rule-engine"] = float("nan")
    try:
        import celpy

        env = celpy.Environment()
        program = env.program(env.compile(RULE.replace(" and not ", " && !").replace(" and ", " && ")))
        activation = {"profile": celpy.json_to_cel(PROFILE)}
        assert program.evaluate(activation)
        figures["cel-python"] = _median_us(lambda: program.evaluate(activation), 500)
    except ImportError:
        figures["cel-python"] = float("nan")
    print(json.dumps({"rule": RULE, "median_us_per_evaluation": figures}))


if __name__ == "__main__":
    main()
