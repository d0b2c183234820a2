"""Key shapes: one slot per customer, ids that cannot break the hash tag or meet another customer's keys."""

from __future__ import annotations

from redis.crc import key_slot

from feature_store import keys
from feature_store.learning import before


def test_every_key_of_a_customer_is_in_one_slot() -> None:
    for make in (keys.customer, keys.anonymous):
        for raw_id in ("c-42", "we{ird}", "}{", "%7B", "a b"):
            profile_keys = make(raw_id)
            slots = {key_slot(k.encode()) for k in profile_keys.script_keys()}
            assert len(slots) == 1, (raw_id, profile_keys.script_keys())


def test_ids_cannot_collide_across_customers_or_id_spaces() -> None:
    ids = ["x", "x}:p", "x}", "{x", "x%7D", "x%", "c:x", "a:x"]
    seen: dict[str, str] = {}
    for raw_id in ids:
        for kind, make in (("c", keys.customer), ("a", keys.anonymous)):
            for key in make(raw_id).script_keys():
                assert key not in seen, (key, seen.get(key), (kind, raw_id))
                seen[key] = f"{kind}:{raw_id}"


def test_braces_are_escaped_so_the_tag_is_the_whole_id() -> None:
    assert keys.customer("a}b").profile == "nba:{c:a%7Db}:p"


def test_script_keys_are_the_named_keys_in_the_order_the_scripts_read_them() -> None:
    """apply.lua and link.lua read KEYS by position: p, w, cart, r, d, s, k, pu, alias."""
    for profile_keys in (keys.customer("c-1"), keys.anonymous("we{ird}")):
        assert profile_keys.script_keys() == [
            profile_keys.profile, profile_keys.windows, profile_keys.cart, profile_keys.recent,
            profile_keys.dedupe, profile_keys.aliases, profile_keys.contacts, profile_keys.purchases,
            profile_keys.alias,
        ]  # fmt: skip
        assert profile_keys.data_keys() == profile_keys.script_keys()[:-1]


def test_the_id_before_an_entry_is_the_last_one_a_group_made_there_has_handed_out() -> None:
    assert before("1700000000000-3") == "1700000000000-2"
    assert before("1700000000000-0") == "1699999999999-18446744073709551615"
    assert before("0-1") == "0-0"
    assert before("0-0") == "0"
