"""The sweeper: deadlines, hedge times and liveness checks for the calls in flight on one
:class:`~framework.transport.Connection`, in a gevent-patched process.

There a waiting call costs a gevent Waiter and nothing else - no timer per call. Each connection
has one sweeper greenlet that wakes at the earliest moment one of its calls is due, and hands the
call its outcome through the hub, as the connection's reader hands over answers. (In a plain
program each call waits on its own ``threading.Event`` with a timeout instead.)
"""
from __future__ import annotations

import math
import time
from typing import Any, Deque, Dict, Tuple

import gevent
import gevent.event
from gevent.hub import Waiter as _Waiter

from .errors import ConnectionLost, Timeout
from .health import check_stall
from .hedging import HedgeDue


class Sweeper:
    """gevent world: one greenlet per connection fails the calls whose deadline passed, tells calls
    their hedge time came, pings a silent node while calls wait, and abandons idempotent calls to a
    node that left its ping unanswered. It sleeps until the earliest deadline, hedge time or
    liveness check, or until a call that is due earlier kicks it: no timer per call."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.wake_at = math.inf       # when it wakes next (inf: when kicked)
        self.kick = gevent.event.Event()
        self.greenlet: Any = None
        self.stall_after = 0.0        # the calls' stall_after (see Connection.call)
        #: per method, (hedge time, call id) of the calls that may be hedged, in the order sent:
        #: one method's delay is the same for all its calls, so each queue is in time order (an
        #: append per call, no scan of every call per hedge)
        self.hedges: Dict[str, Deque[Tuple[float, int]]] = {}
        self.scan_at = math.inf       # when deadlines and liveness are checked next (no later
                                      # than any pending call's deadline)

    def due(self, at: float, stall_after: float) -> None:
        """A call's deadline is ``at``."""
        self.stall_after = stall_after
        if at < self.scan_at:
            # no pass was due by then: pass over the calls now (the pass sets the next one: the
            # earliest deadline, or the next liveness check)
            self.scan_at = 0.0
            self.wake(0.0)

    def wake(self, at: float) -> None:
        self.wake_at = at
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)
        else:
            self.kick.set()

    def _run(self) -> None:
        conn, kick = self.conn, self.kick
        while conn.alive:
            kick.clear()
            now = time.monotonic()
            next_hedge = self._hedge(now) if self.hedges else math.inf
            if now >= self.scan_at:
                self.scan_at = self._sweep(now)
            wake = min(self.scan_at, next_hedge)
            self.wake_at = wake
            kick.wait(None if wake == math.inf else max(0.0, wake - time.monotonic()))
        self.greenlet = None

    def _hedge(self, now: float) -> float:
        """Tell the calls whose hedge time came, and that still wait, so: the caller decides
        whether to send a backup (the call stays pending). Calls answered meanwhile are dropped
        from the queues' heads whatever their time, so the sweeper wakes only for a call that
        still waits, not once per call. Returns the next hedge time."""
        conn, pending = self.conn, self.conn._pending
        deliver = conn._hub.loop.run_callback
        wake = math.inf
        for queue in self.hedges.values():
            while queue:
                at, rid = queue[0]
                entry = pending.get(rid)
                if entry is not None and type(entry[0]) is _Waiter:   # waiting, not in a race
                    if at > now:
                        wake = min(wake, at)
                        break
                    deliver(entry[0].switch, HedgeDue(conn, rid, entry[0]))
                queue.popleft()
        return wake

    def _sweep(self, now: float) -> float:
        """One pass over the calls in flight: deadlines and liveness. Returns when the next pass
        is due."""
        conn, pending = self.conn, self.conn._pending
        deliver = conn._hub.loop.run_callback
        wake = oldest = math.inf
        expired = []
        for rid, entry in list(pending.items()):
            if entry[1] <= now:
                expired.append(rid)
                continue
            wake = min(wake, entry[1])
            oldest = min(oldest, entry[1] - entry[2])
        for rid in expired:
            entry = pending.pop(rid, None)
            if entry is not None:
                deliver(entry[0].switch, Timeout(
                    f"no answer from {conn.address} within {entry[2]:.3f}s"))
        if expired:
            conn._retire_if_idle()
        return min(wake, check_stall(conn, now, oldest, self.stall_after, self._abandon))

    def _abandon(self, stall: float) -> None:
        conn = self.conn
        deliver = conn._hub.loop.run_callback
        for rid, entry in list(conn._pending.items()):
            if entry[3] and conn._pending.pop(rid, None) is not None:
                deliver(entry[0].switch, ConnectionLost(
                    f"{conn.address} stopped answering (no reply to a ping in {stall:.2f}s)"))

