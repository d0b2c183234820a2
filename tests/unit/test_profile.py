"""Window arithmetic, stage rules and merges: pure code, no Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from feature_store.profile import (
    DAY_MS,
    RECENT_EVENTS,
    WINDOWS,
    RawProfile,
    StageRules,
    Window,
    bucket_field,
    decode,
    loads,
    merge,
    stage,
    window_counts,
)

MINUTE = 60_000
HOUR = 60 * MINUTE
NOW = 1_795_000_000_000 - 1_795_000_000_000 % DAY_MS + 13 * HOUR + 7 * MINUTE + 12_345


def buckets_for(time_ms: int, event_type: str = "page_view") -> dict[str, str]:
    """The window field one event at ``time_ms`` writes when it arrives at NOW (as apply.lua does)."""
    field = bucket_field(time_ms, event_type, NOW)
    return {} if field is None else {field: "1"}


def legacy_buckets_for(time_ms: int, event_type: str = "page_view") -> dict[str, str]:
    """The fields one event wrote before the windows nested: a bucket in every window."""
    return {f"{w.legacy_code}{time_ms // w.bucket_ms}:{event_type}": "1" for w in WINDOWS}


def add(*fields: dict[str, str]) -> dict[str, str]:
    out: dict[str, int] = {}
    for f in fields:
        for k, v in f.items():
            out[k] = out.get(k, 0) + int(v)
    return {k: str(v) for k, v in out.items()}


@pytest.mark.parametrize(
    ("age_ms", "expected"),
    [
        (0, {"30m": 1, "24h": 1, "7d": 1, "30d": 1}),
        (29 * MINUTE, {"30m": 1, "24h": 1, "7d": 1, "30d": 1}),
        (32 * MINUTE, {"30m": 0, "24h": 1, "7d": 1, "30d": 1}),
        (23 * HOUR, {"30m": 0, "24h": 1, "7d": 1, "30d": 1}),
        (26 * HOUR, {"30m": 0, "24h": 0, "7d": 1, "30d": 1}),
        (6 * DAY_MS, {"30m": 0, "24h": 0, "7d": 1, "30d": 1}),
        (8 * DAY_MS, {"30m": 0, "24h": 0, "7d": 0, "30d": 1}),
        (32 * DAY_MS, {"30m": 0, "24h": 0, "7d": 0, "30d": 0}),
    ],
)
@pytest.mark.parametrize("layout", [buckets_for, legacy_buckets_for], ids=["nested", "legacy"])
def test_an_event_counts_in_the_windows_its_age_fits(
    age_ms: int, expected: dict[str, int], layout: Callable[[int], dict[str, str]]
) -> None:
    empty = {w.name: 0 for w in WINDOWS}
    assert window_counts(layout(NOW - age_ms), NOW).get("page_view", empty) == expected


@pytest.mark.parametrize(
    "age_ms", [0, 29 * MINUTE, 32 * MINUTE, 23 * HOUR, 26 * HOUR, 6 * DAY_MS, 8 * DAY_MS]
)
def test_an_event_counts_the_same_in_any_bucket_that_may_hold_it(age_ms: int) -> None:
    # apply.lua folds a bucket into a coarser one at most once a minute, and only when events arrive: an
    # event may still be in the bucket it landed in, or in any coarser one up to the finest that holds it
    # now.
    time_ms = NOW - age_ms
    now_field = buckets_for(time_ms)
    assert now_field
    finest_now = next(i for i, w in enumerate(WINDOWS) if next(iter(now_field)).startswith(w.code))
    expected = window_counts(now_field, NOW)
    for w in WINDOWS[: finest_now + 1]:
        assert window_counts({f"{w.code}{time_ms // w.bucket_ms}:page_view": "1"}, NOW) == expected, w.name


@pytest.mark.parametrize("layout", [buckets_for, legacy_buckets_for], ids=["nested", "legacy"])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: w.name)
def test_a_window_covers_at_least_its_length_and_at_most_one_bucket_more(
    window: Window, layout: Callable[[int], dict[str, str]]
) -> None:
    length = window.bucket_ms * window.buckets
    inside = window_counts(layout(NOW - length), NOW)["page_view"][window.name]
    beyond = window_counts(layout(NOW - length - window.bucket_ms - 1), NOW)
    assert inside == 1
    assert beyond.get("page_view", {}).get(window.name, 0) == 0


def test_a_field_of_no_known_window_counts_nowhere() -> None:
    assert window_counts({"x29345678:page_view": "3"}, NOW) == {}


def test_the_layouts_add_up_in_a_profile_that_holds_both() -> None:
    # A profile written before the windows nested, then after: each event is in one layout or the other.
    fields = add(
        legacy_buckets_for(NOW - 2 * HOUR), buckets_for(NOW - 5 * MINUTE), buckets_for(NOW - 3 * DAY_MS)
    )
    assert window_counts(fields, NOW)["page_view"] == {"30m": 1, "24h": 2, "7d": 3, "30d": 3}


def test_windows_sum_per_type_and_ignore_other_types() -> None:
    fields = add(buckets_for(NOW), buckets_for(NOW - 5 * MINUTE), buckets_for(NOW, "faq_view"))
    counts = window_counts(fields, NOW)
    assert counts["page_view"]["30m"] == 2
    assert counts["faq_view"]["30m"] == 1


def profile(**fields: object) -> dict[str, str]:
    return {k: str(v) for k, v in fields.items()}


@pytest.mark.parametrize(
    ("fields", "cart_lines", "expected"),
    [
        ({"n:page_view": 3}, 0, "awareness"),
        ({"n:page_view": 3, "n:product_view": 1}, 0, "consideration"),
        ({"n:signup": 1}, 0, "consideration"),
        ({"n:page_view": 1}, 1, "purchase"),
        ({"n:checkout_started": 1, "t:checkout_started": NOW - HOUR}, 0, "purchase"),
        ({"n:checkout_started": 1, "t:checkout_started": NOW - 2 * DAY_MS}, 0, "consideration"),
        ({"orders": 1, "t:purchase": NOW - DAY_MS}, 0, "retention"),
        ({"orders": 2, "t:purchase": NOW - DAY_MS}, 1, "retention"),
        ({"orders": 3, "t:purchase": NOW - DAY_MS}, 0, "loyalty"),
        ({"orders": 5, "t:purchase": NOW - 91 * DAY_MS}, 0, "lapsed"),
        ({"orders": 1, "t:purchase": NOW - 90 * DAY_MS}, 0, "retention"),
    ],
)
def test_stage_rules(fields: dict[str, object], cart_lines: int, expected: str) -> None:
    assert stage(profile(**fields), cart_lines, NOW) == expected


def test_stage_thresholds_are_settings() -> None:
    rules = StageRules(loyal_orders=2, lapsed_after_days=30)
    assert stage(profile(orders=2, **{"t:purchase": NOW - DAY_MS}), 0, NOW, rules) == "loyalty"
    assert stage(profile(orders=2, **{"t:purchase": NOW - 31 * DAY_MS}), 0, NOW, rules) == "lapsed"


def recent(t: int, event_type: str = "page_view", key: str = "") -> tuple[str, float]:
    return json.dumps({"y": event_type, "t": t, "k": key or str(t)}), float(t)


def test_merge_adds_counters_and_windows_and_keeps_extremes() -> None:
    known = RawProfile(
        profile=profile(
            **{"n:page_view": 2, "t:page_view": NOW, "first": NOW - HOUR, "orders": 1, "revenue": 10.5}
        ),
        windows=add(buckets_for(NOW), buckets_for(NOW)),
    )
    anon = RawProfile(
        profile=profile(
            **{"n:page_view": 3, "n:faq_view": 1, "t:page_view": NOW - DAY_MS, "first": NOW - DAY_MS},
            orders=1,
            revenue=4.25,
        ),
        windows=add(buckets_for(NOW), buckets_for(NOW - 2 * DAY_MS)),
    )
    merged = merge(known, anon)
    assert merged.profile["n:page_view"] == "5"
    assert merged.profile["n:faq_view"] == "1"
    assert merged.profile["t:page_view"] == str(NOW)
    assert merged.profile["first"] == str(NOW - DAY_MS)
    assert merged.profile["orders"] == "2"
    assert float(merged.profile["revenue"]) == pytest.approx(14.75)
    counts = window_counts(merged.windows, NOW)["page_view"]
    assert counts == {"30m": 3, "24h": 3, "7d": 4, "30d": 4}


def test_merge_keeps_the_later_consent_and_attribute_whatever_side() -> None:
    known = RawProfile(profile={"c:email": f"{NOW}|0", "a:tier": f'{NOW - HOUR}|"silver"'})
    anon = RawProfile(profile={"c:email": f"{NOW - HOUR}|1", "a:tier": f'{NOW}|"gold"', "c:sms": f"{NOW}|1"})
    merged = decode(merge(known, anon), id="c", kind="customer", now_ms=NOW)
    assert merged.consent["email"].granted is False
    assert merged.consent["sms"].granted is True
    assert merged.attributes["tier"] == "gold"


def test_merge_carries_the_cart_over() -> None:
    known = RawProfile(profile={"n:add_to_cart": "1"}, cart={"sku-1": f"1|10.0|{NOW - HOUR}"})
    anon = RawProfile(profile={"n:add_to_cart": "2"}, cart={"sku-1": f"2|12.0|{NOW}", "sku-2": f"1||{NOW}"})
    cart = decode(merge(known, anon), id="c", kind="customer", now_ms=NOW).cart
    lines = {line.item_id: (line.quantity, line.price) for line in cart.lines}
    assert lines == {"sku-1": (3, 12.0), "sku-2": (1, None)}
    assert cart.quantity == 4


def test_merge_interleaves_recent_events_and_keeps_the_newest() -> None:
    known = RawProfile(
        profile={"n:x": "1"}, recent=tuple(recent(NOW - i * 2 * MINUTE, "a") for i in range(15))
    )
    anon = RawProfile(
        profile={"n:x": "1"}, recent=tuple(recent(NOW - (i * 2 + 1) * MINUTE, "b") for i in range(15))
    )
    merged = decode(merge(known, anon), id="c", kind="customer", now_ms=NOW)
    assert len(merged.recent) == RECENT_EVENTS
    assert [e.type for e in merged.recent[:4]] == ["a", "b", "a", "b"]
    times = [e.time_ms for e in merged.recent]
    assert times == sorted(times, reverse=True)
    assert times[-1] == NOW - 19 * MINUTE


def test_merge_unites_seen_event_ids() -> None:
    known = RawProfile(profile={"n:x": "1"}, dedupe=(("e:1", 5.0), ("e:2", 5.0)))
    anon = RawProfile(profile={"n:x": "1"}, dedupe=(("e:2", 7.0), ("e:3", 6.0)))
    assert dict(merge(known, anon).dedupe) == {"e:1": 5.0, "e:2": 7.0, "e:3": 6.0}


def test_merge_refuses_a_field_it_has_no_rule_for() -> None:
    with pytest.raises(ValueError, match="no merge rule"):
        merge(RawProfile(profile={"mystery": "1"}), RawProfile(profile={"mystery": "2"}))


@pytest.mark.parametrize(
    "text",
    [
        '[{"y":"page_view","t":1763900000000,"p":{"page":"/"},"k":"e-1"}]',
        '{"item_id":123456789012345678901234567890}',  # beyond 64 bits: json keeps it an int
        '{"item_id":18446744073709551616}',
        '{"item_id":-9223372036854775809}',
        '{"item_id":999999999999999999}',  # 18 digits: orjson's, the same int
        '{"n":NaN,"i":Infinity}',
        '{"x":1e400}',
        '["\\ud800"]',  # a lone surrogate, escaped
        '["\ud800"]',  # and as the text itself
        '{"a":"é","b":[1.5,-0.0,true,null],"a":2}',
        "[1,",  # not JSON at all
    ],
)
def test_loads_reads_as_the_json_module_reads(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        with pytest.raises(json.JSONDecodeError, match=exc.msg):
            loads(text)
        return
    got = loads(text)
    assert repr(got) == repr(expected)  # the same types: an int stays an int, nan stays nan
