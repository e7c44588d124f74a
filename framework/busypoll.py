"""Busy polling: after each event, a process's gevent loop keeps polling for a short while
instead of sleeping, so the next event is handled at once rather than after a wake-up.

At low concurrency a call's latency is mostly waiting: a gateway sends a call to a node and
sleeps in ``epoll_wait`` until the answer comes; the kernel then has to wake its thread, and on a
virtual machine first its idle virtual CPU. A gateway waits like that twice per HTTP request (for
the node, then for the client's next request), so it pays these wake-ups more often than a
server that answers in place. With a budget of ``budget_us`` microseconds, the loop polls without
blocking (``epoll_wait`` with a zero timeout, through a libev idle watcher) until that long has
passed with no event, then sleeps as before. Seastar's ``--idle-poll-time-us`` (200 µs by
default) and Linux's ``SO_BUSY_POLL`` make the same trade.

The price is CPU: a process that is waiting spins for up to the budget after each event, so at
one request at a time it keeps its core busy. A process with nothing to do does not spin
(timers wake it rarely, and each wake costs at most one budget). Off by default: spinning eats a
container's CPU quota, and on a shared core it takes time from the neighbours. The measured gain
and cost are in docs/performance.md (round 15). ``serve --busy-poll US`` and
``gateway --busy-poll US`` turn it on for their process (each pre-fork worker has its own).
"""
from __future__ import annotations

import time
from typing import Optional

#: the largest budget accepted: longer spins buy nothing that sleeping would not
MAX_BUDGET_US = 10_000


def check_budget(budget_us: float) -> float:
    """``budget_us`` if it is a usable budget in microseconds, else ValueError saying why."""
    if not 0 <= budget_us <= MAX_BUDGET_US:
        raise ValueError(f"busy-poll budget must be between 0 and {MAX_BUDGET_US} microseconds, "
                         f"got {budget_us:g}")
    return budget_us


class BusyPoll:
    """Spin this thread's gevent loop for ``budget_us`` µs after each event.

    A check watcher runs after every poll of the loop and counts the loop's turns; when it finds
    the loop was sleeping, it starts an idle watcher, which keeps the loop polling. libev calls an
    idle watcher only on a turn that handled nothing else, so a gap between two of its turns means
    events were handled in between: the budget starts again from then. After a whole budget of
    empty turns the idle watcher stops and the loop sleeps again. Neither watcher keeps the loop
    alive on its own.
    """

    def __init__(self, budget_us: float):
        import gevent
        self.budget = check_budget(budget_us) / 1e6
        loop = gevent.get_hub().loop
        self._idle = loop.idle()
        self._check = loop.check()
        self._idle.ref = self._check.ref = False
        self._until = 0.0       # when the spin stops, unless an event comes first
        self._idle_turn = -2    # the turn of the idle watcher's last call
        #: the loop's turns since :meth:`start`, and how often it began to spin after sleeping
        #: (for tests and curious operators)
        self.turns = self.spins = 0

    def start(self) -> "BusyPoll":
        if self.budget > 0 and not self._check.active:
            self._check.start(self._on_check)
        return self

    def stop(self) -> None:
        self._check.stop()
        self._idle.stop()

    def _on_check(self) -> None:
        self.turns += 1
        if not self._idle.active:   # the loop slept until something happened: spin from now
            self._until = time.monotonic() + self.budget
            self._idle_turn = -2
            self.spins += 1
            self._idle.start(self._on_idle)

    def _on_idle(self) -> None:
        now = time.monotonic()
        if self.turns != self._idle_turn + 1:   # turns without this call: events were handled
            self._until = now + self.budget
        self._idle_turn = self.turns
        if now >= self._until:
            self._idle.stop()


def install(budget_us: float) -> Optional[BusyPoll]:
    """Busy polling on this thread's loop with ``budget_us`` (0: none, returns None)."""
    return BusyPoll(budget_us).start() if budget_us else None
