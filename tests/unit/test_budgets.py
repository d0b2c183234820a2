"""A decision's budget (app/budgets.py) ends blocks as asyncio.timeout does, with one timer for all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from app.budgets import Budgets

Within = Callable[[float], AbstractAsyncContextManager[Any]]


async def _run(within: Within, seconds: float, body_s: float, cancel_after_s: float | None = None) -> str:
    """How a block of ``body_s`` under a budget of ``seconds`` ends: done, timeout or cancelled."""

    async def block() -> str:
        try:
            async with within(seconds):
                await asyncio.sleep(body_s)
            await asyncio.sleep(2 * seconds)  # after the block: its deadline must not cut this short
            return "done"
        except TimeoutError:
            return "timeout"

    task = asyncio.ensure_future(block())
    if cancel_after_s is not None:
        await asyncio.sleep(cancel_after_s)
        task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


CASES = [
    pytest.param(0.05, 0.0, None, "done", id="quick"),
    pytest.param(0.02, 0.3, None, "timeout", id="slow"),
    pytest.param(0.0, 0.01, None, "timeout", id="no budget at all"),
    pytest.param(0.5, 0.3, 0.02, "cancelled", id="cancelled by someone else first"),
]


@pytest.mark.parametrize(("seconds", "body_s", "cancel_after_s", "expected"), CASES)
async def test_a_block_ends_as_under_asyncio_timeout(
    seconds: float, body_s: float, cancel_after_s: float | None, expected: str
) -> None:
    budgets = Budgets()
    assert await _run(asyncio.timeout, seconds, body_s, cancel_after_s) == expected
    assert await _run(budgets.within, seconds, body_s, cancel_after_s) == expected


async def _cancelled_as_it_expires(within: Within) -> str:
    """The deadline passes and someone else cancels the task too, before it runs again."""
    loop = asyncio.get_running_loop()

    async def block() -> str:
        try:
            async with within(0.0):
                loop.call_soon(task.cancel)
                await asyncio.sleep(0.3)
            return "done"
        except TimeoutError:
            return "timeout"

    task = asyncio.ensure_future(block())
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


async def test_a_cancel_beside_the_deadline_is_not_taken_for_it() -> None:
    assert await _cancelled_as_it_expires(asyncio.timeout) == "cancelled"
    assert await _cancelled_as_it_expires(Budgets().within) == "cancelled"


async def test_deadlines_of_many_blocks_in_any_order_each_hold() -> None:
    """A short budget entered after long ones is cut at its own deadline, and the long ones are not."""
    budgets = Budgets()
    plan = [1.0] * 5 + [0.02] * 5 + [1.0] * 5 + [0.03] * 5
    outcomes = await asyncio.gather(*(_run(budgets.within, seconds, 0.15) for seconds in plan))
    assert outcomes == ["timeout" if seconds < 0.1 else "done" for seconds in plan]


async def test_blocks_ended_early_leave_the_timer_to_the_ones_left() -> None:
    budgets = Budgets()
    quick = [_run(budgets.within, 0.02, 0.0) for _ in range(50)]
    slow = [_run(budgets.within, 0.05, 0.3) for _ in range(3)]
    assert await asyncio.gather(*quick, *slow) == ["done"] * 50 + ["timeout"] * 3


async def test_a_deadline_is_entered_once() -> None:
    deadline = Budgets().within(1.0)
    async with deadline:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with deadline:
            pass


def test_one_budgets_serves_one_loop_after_another() -> None:
    # The deadlines' task is looked up in the loop they last waited in; a loop run after it (a closed
    # one left behind) must still find its own task, and cut its blocks short.
    budgets = Budgets()
    for _ in range(2):
        assert asyncio.run(_run(budgets.within, 0.02, 0.3)) == "timeout"
        assert asyncio.run(_run(budgets.within, 0.05, 0.0)) == "done"
