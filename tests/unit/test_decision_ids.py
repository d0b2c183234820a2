"""Decision ids: their form, their order, and no repeats, across the draws of random digits and a fork."""

from __future__ import annotations

import os
import re

import pytest

from app.services import new_decision_id

NOW_MS = 1_795_522_360_138


def test_an_id_is_d_then_milliseconds_then_sixteen_random_hex_digits() -> None:
    decision_id = new_decision_id(NOW_MS)
    assert re.fullmatch(r"d-[0-9a-f]{12}[0-9a-f]{16}", decision_id), decision_id
    assert int(decision_id[2:14], 16) == NOW_MS


def test_ids_sort_by_time() -> None:
    ids = [new_decision_id(NOW_MS + step) for step in (0, 1, 1000, 86_400_000)]
    assert sorted(ids) == ids


def test_no_id_repeats_across_several_draws_of_random_digits() -> None:
    # 512 ids per draw from the operating system: 3,000 ids cross five draws.
    ids = [new_decision_id(NOW_MS) for _ in range(3000)]
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_decision_id(NOW_MS)  # random digits wait in the parent
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids to the parent, then out without running pytest's exit
        try:
            os.write(write_end, " ".join(new_decision_id(NOW_MS) for _ in range(20)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_decision_id(NOW_MS) for _ in range(20)}
    assert len(child) == 20
    assert not child & parent
