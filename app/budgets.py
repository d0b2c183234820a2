"""A decision's budget: what ``asyncio.timeout`` does, with one timer for all of a worker's decisions.

``asyncio.timeout`` arms a timer on entry and disarms it on exit: on uvloop that is a timer allocated
and freed per decision, about 3 of the 6.6 µs the context manager costs (docs/performance.md). Here
the deadlines of one event loop wait in a heap, and one timer is armed for the earliest: it fires
about once per budget, not once per decision, since most decisions are over by their deadline.

The behaviour is ``asyncio.timeout``'s (Python 3.11): at the deadline the task is cancelled, and the
block ends in ``TimeoutError``, unless the task was also cancelled by someone else meanwhile, in which
case the ``CancelledError`` goes on (``Task.uncancel`` counts the requests). A block that ends before
its deadline is never cancelled by it.

Examples
--------
>>> budgets = Budgets()                                 # doctest: +SKIP
>>> async with budgets.within(0.05):                    # doctest: +SKIP
...     await store.apply_and_read(...)
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from types import TracebackType
from typing import Final

_ENTERED: Final = 1
_EXPIRING: Final = 2  # the deadline passed and the task was cancelled for it
_EXITED: Final = 3


class Budgets:
    """The deadlines of one event loop's tasks (another loop starts afresh)."""

    __slots__ = ("_heap", "_loop", "_order", "_timer", "_timer_at")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()  # ties at the same instant: first in, first out
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def within(self, seconds: float) -> Deadline:
        """An async context manager: the block is cut short ``seconds`` from now."""
        return Deadline(self, seconds)

    def _add(self, deadline: Deadline, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            self._heap, self._loop, self._timer, self._timer_at = [], loop, None, math.inf
        heapq.heappush(self._heap, (deadline.when, next(self._order), deadline))
        if deadline.when < self._timer_at:
            self._arm(deadline.when)

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(when, self._fire), when

    def _fire(self) -> None:
        """Cancel the tasks whose deadline has come; drop the deadlines whose block has ended; arm the
        timer for the next one left."""
        assert self._loop is not None
        self._timer, self._timer_at = None, math.inf
        now, heap = self._loop.time(), self._heap
        while heap:
            when, _, deadline = heap[0]
            if deadline.state == _EXITED:
                heapq.heappop(heap)
            elif when <= now:
                heapq.heappop(heap)
                deadline.expire()
            else:
                self._arm(when)
                return


class Deadline:
    """One block's deadline (:meth:`Budgets.within`)."""

    __slots__ = ("_budgets", "_cancelling", "_seconds", "_task", "state", "when")

    def __init__(self, budgets: Budgets, seconds: float) -> None:
        self._budgets, self._seconds = budgets, seconds
        self.state = 0
        self.when = math.inf

    async def __aenter__(self) -> Deadline:
        if self.state:
            raise RuntimeError("a deadline is entered once")
        # The task of the loop the deadlines wait in, found without asking which loop runs: that asks
        # the system for the process id (a fork's check), a system call per decision. Another loop (a
        # first deadline, a new loop) is asked the long way. Budgets serve one thread's loop at a time.
        task = asyncio.current_task(self._budgets._loop) if self._budgets._loop is not None else None
        if task is None:
            task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline is used inside a task")
        loop = task.get_loop()
        self._task, self._cancelling = task, task.cancelling()
        self.when, self.state = loop.time() + self._seconds, _ENTERED
        self._budgets._add(self, loop)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        expired, self.state = self.state == _EXPIRING, _EXITED
        if expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expire(self) -> None:
        """The deadline has come: cancel the task (called by the timer only)."""
        if self.state == _ENTERED:
            self.state = _EXPIRING
            self._task.cancel()
