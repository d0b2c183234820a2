"""The arguments apply.lua gets for an event (feature_store/store.py ``script_args``)."""

from __future__ import annotations

from typing import Any

import pytest

from feature_store.events import Event
from feature_store.profile import loads
from feature_store.store import script_args


@pytest.mark.parametrize(
    "props",
    [
        {"item_id": "sku-12", "price": 25.0},
        {"page": "/café/☕", "query": 'say "hi"\n'},  # kept as written, escaped where JSON must
        {"quantity": 2**70, "category": ["a", None, True, 1.5e300]},  # beyond 64 bits: the json module
        {"page": "\ud800"},  # a lone surrogate, which orjson refuses: the json module
    ],
)
def test_a_recent_event_keeps_its_key_properties_as_they_were_sent(props: dict[str, Any]) -> None:
    event = Event("page_view", 1_700_000_000_000, customer_id="c-1", event_id="e-1", properties=props)
    member = script_args(event)[3]
    assert loads(member) == {"y": "page_view", "t": 1_700_000_000_000, "p": props, "k": "e-1"}
    assert "\\u" not in member.replace("\\ud800", "")  # no character escaped that JSON lets stand


def test_an_event_without_key_properties_has_none_in_its_member() -> None:
    event = Event("page_view", 1_700_000_000_000, customer_id="c-1", event_id="e-1", properties={"x": 1})
    assert loads(script_args(event)[3]) == {"y": "page_view", "t": 1_700_000_000_000, "k": "e-1"}
