"""The sweeper on an event loop: deadlines, hedge times, liveness and write progress for the calls
in flight on one :class:`~framework.aio.connection.AioConnection`.

:mod:`framework.sweeper`'s design with one loop timer per connection instead of a greenlet: the
timer is set for the earliest moment anything is due, and a call only compares its deadline (and
hedge time) with that moment - no timer per call, so a call costs its future and nothing else.
"""
from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Any, Deque, Dict, Tuple

from ..health import check_stall
from ..hedging import HedgeDue


class LoopSweeper:
    """Fails the calls whose deadline passed, tells calls their hedge time came, pings a silent
    node while calls wait, abandons idempotent calls to a node that left its ping unanswered, and
    gives up a connection whose writes make no progress."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.wake_at = math.inf   # when the timer fires next (inf: no timer)
        self.timer: Any = None
        #: when deadlines, liveness and writes are checked next (no later than any pending call's
        #: deadline); a call due earlier moves it
        self.scan_at = math.inf
        #: per method, (hedge time, call id, its future) in the order sent: one method's delay is
        #: the same for all its calls, so each queue is in time order (an append per call)
        self.hedges: Dict[str, Deque[Tuple[float, int, asyncio.Future]]] = {}

    def due(self, at: float) -> None:
        """Something is due at ``at``, earlier than the next pass: pass over the calls now (the
        pass sets the next one)."""
        if at < self.scan_at:
            self.scan_at = 0.0
            self.wake(0.0)

    def hedge(self, method: str, at: float, rid: int, fut: asyncio.Future) -> None:
        """Call ``rid`` of ``method``, awaited as ``fut``, may send a backup at ``at``."""
        queue = self.hedges.get(method)
        if queue is None:
            queue = self.hedges.setdefault(method, collections.deque())
        queue.append((at, rid, fut))
        if at < self.wake_at:
            self.wake(at)

    def wake(self, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.wake_at = at
        self.timer = None if at == math.inf else self.conn._loop.call_at(at, self._run)

    def stop(self) -> None:
        self.wake(math.inf)
        self.hedges.clear()

    def _run(self) -> None:
        self.timer, self.wake_at = None, math.inf
        if not self.conn.alive:
            return
        now = time.monotonic()
        next_hedge = self._hedge(now) if self.hedges else math.inf
        if now >= self.scan_at:
            self.scan_at = self._scan(now)
        self.wake(min(self.scan_at, next_hedge))

    def _hedge(self, now: float) -> float:
        """Tell the calls whose hedge time came, and that still wait, so: each gets a
        :class:`HedgeDue` and goes on under a new future. Calls answered meanwhile leave the
        queues' heads whatever their time, so the timer fires for a waiting call only. Returns
        the next hedge time."""
        conn, pending = self.conn, self.conn._pending
        wake = math.inf
        for queue in self.hedges.values():
            while queue:
                at, rid, fut = queue[0]
                entry = pending.get(rid)
                if entry is not None and entry[0] is fut and not fut.done():
                    if at > now:
                        wake = min(wake, at)
                        break
                    handle = conn._loop.create_future()
                    pending[rid] = (handle,) + entry[1:]
                    fut.set_result(HedgeDue(conn, rid, handle))
                queue.popleft()
        return wake

    def _scan(self, now: float) -> float:
        """One pass over the calls in flight: deadlines, liveness, writes. Returns when the next
        pass is due."""
        conn = self.conn
        wake = oldest = math.inf
        expired = []
        for rid, (_, _, deadline, timeout) in list(conn._pending.items()):
            if deadline <= now:
                expired.append(rid)
                continue
            wake = min(wake, deadline)
            oldest = min(oldest, deadline - timeout)
        for rid in expired:
            conn._expire(rid)
        wake = min(wake, check_stall(conn, now, oldest, conn.stall_after, conn._abandon))
        if conn._paused:
            if not conn._writing(now):
                return math.inf   # given up: the connection failed
            wake = min(wake, now + conn.write_stall / 4)
        return wake
