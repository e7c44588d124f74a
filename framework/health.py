"""Node health: which of a service's nodes the balancer may pick right now.

The balancer asks one question, :meth:`Health.usable`, and the client reports every call's outcome
with :meth:`Health.record`. Two signals answer it:

* **Outlier ejection.** Consecutive failures eject a node for a backoff that doubles, up to
  ``eject_cap``, each time it fails again once back; one success takes it back and resets the
  backoff. Calls that were in flight when it was ejected fail without effect (a burst is one
  ejection). A node whose connect is refused, or whose connection died, is ejected at once.
* **Failure rate.** At the first failure after ``window`` seconds (the window is judged then: a
  window with no failure needs no judgement), a node that served at least ``min_calls`` calls and
  failed at least ``failure_rate`` of them - and at least twice as often as its peers did - is
  ejected the same way (gRPC's outlier detection, A50, does this by failure percentage). It comes
  back when the backoff ends; if it still fails, the next window ejects it for twice as long. At
  most half of the nodes are ejected by rate, so a cluster-wide problem never empties the pool.
  What counts as a failure is the client's call: the node could not be reached, lost the call,
  refused it as overloaded or failed inside the framework (-32603). A handler's own error is an
  answer, not a node failure.
* **Stall.** A node that leaves a liveness ping unanswered is frozen, paused or blackholed, whatever
  its lease says. The transport sends the pings (a node answers them without running a handler);
  ``stalled(address, now)`` reports what it saw.

If every node is unusable, the client tries one anyway: a guess beats certain failure.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional

from .errors import ConnectionLost, InternalError, NotSent, Overloaded, Timeout

log = logging.getLogger(__name__)

#: errors a node answers with that count against its health: the framework failed on it (-32603),
#: or it refused the call as overloaded (a node going away is draining, not failing)
NODE_FAILURES = (InternalError, Overloaded)
#: what an attempt's failure means for the call (:meth:`Health.judge`)
RETRY, ANSWERED, LOST = "retry", "answered", "lost"


class NodeHealth:
    """Outlier ejection for one node."""

    __slots__ = ("failures", "ejected_until", "ejections", "calls", "failed", "strikes")

    def __init__(self):
        self.failures = 0         # consecutive
        self.ejected_until = 0.0
        self.ejections = 0
        self.calls = 0            # this window's calls and failures
        self.failed = 0
        self.strikes = 0          # windows in a row that ejected it for its failure rate

    def usable(self, now: float) -> bool:
        return now >= self.ejected_until

    def success(self) -> None:
        self.failures = 0
        self.ejections = 0   # an answer ends the streak: the next ejection starts short again

    def failure(self, now: float, threshold: int, base: float, cap: float) -> bool:
        """Record a failure; returns True when this failure ejected the node. Failures of calls
        already in flight when it was ejected change nothing (a burst is one ejection, not a
        doubling per call)."""
        if now < self.ejected_until:
            return False
        self.failures += 1
        if self.failures >= threshold:
            self.ejected_until = now + min(cap, base * (2 ** self.ejections))
            self.ejections = min(self.ejections + 1, 16)
            self.failures = 0
            return True
        return False


def _never_stalled(address: str, now: float) -> bool:
    return False


class Health:
    """The health of every node one client calls, keyed by address. Thread/greenlet safe: records
    are created with ``setdefault`` and updated without a lock (a lost update under a race only
    delays an ejection by one failure)."""

    def __init__(self, stalled: Callable[[str, float], bool] = _never_stalled,
                 eject_threshold: int = 3, eject_base: float = 0.5, eject_cap: float = 10.0,
                 window: float = 1.0, min_calls: int = 20, failure_rate: float = 0.2):
        self.stalled = stalled
        self.eject_threshold = eject_threshold
        self.eject_base, self.eject_cap = eject_base, eject_cap
        self.window, self.min_calls, self.failure_rate = window, min_calls, failure_rate
        self._nodes: Dict[str, NodeHealth] = {}
        self._window_start = 0.0
        self.rate_ejections = 0   # ejections by failure rate so far
        self.streak_ejections = 0   # ejections for failures in a row (or a refused connect)

    def usable(self, address: str, now: float) -> bool:
        h = self._nodes.get(address)
        if h is not None and not h.usable(now):
            return False
        return not self.stalled(address, now)

    def record(self, address: str, ok: bool, eject_now: bool = False,
               now: Optional[float] = None, streak: bool = True) -> None:
        """One call's outcome; ``eject_now``: the node is certainly unreachable. ``now``: the
        caller's clock reading, when it has one. ``streak=False``: a failure that counts toward
        the failure rate only (a node refusing calls as overloaded is alive: ejecting it after a
        few refusals would idle it while its peers are just as overloaded)."""
        h = self._nodes.get(address)
        if h is None:
            h = self._nodes.setdefault(address, NodeHealth())
        h.calls += 1
        if ok:
            if h.failures or h.ejections:
                h.success()
            return   # only a failure can make a judgement due: the hot path stays two steps
        if now is None:
            now = time.monotonic()
        h.failed += 1
        threshold = 1 if eject_now else self.eject_threshold
        if streak and h.failure(now, threshold, self.eject_base, self.eject_cap):
            self.streak_ejections += 1
            log.info("ejected node %s for %.1fs", address, h.ejected_until - now)
        if now - self._window_start >= self.window:
            self._judge_window(now)

    def judge(self, address: str, exc: Any, conn: Any, idempotent: bool, now: float) -> str:
        """An attempt on ``address`` failed with ``exc``: record it in the node's health, and say what
        it means for the call - ``RETRY`` (re-send it elsewhere), ``ANSWERED`` (the node answered
        with an error: raise it) or ``LOST`` (raise it)."""
        if isinstance(exc, NotSent):
            self.record(address, False, True, now)
            return RETRY
        if isinstance(exc, ConnectionLost):
            # a dead connection ejects at once; a stalled node is skipped until it answers
            self.record(address, False, conn is not None and not conn.alive, now)
            return RETRY if idempotent else LOST
        if isinstance(exc, Timeout):
            self.record(address, False, False, now)
            return LOST
        # a handler's error is an answer; NODE_FAILURES are the node's own failures (a node that
        # refuses as overloaded is alive: no streak)
        self.record(address, type(exc) not in NODE_FAILURES, False, now, type(exc) is not Overloaded)
        return RETRY if exc.not_processed else ANSWERED  # going away / overloaded: not run

    def _judge_window(self, now: float) -> None:
        """The end of a window: eject the nodes that failed far more often than their peers."""
        self._window_start = now
        nodes = list(self._nodes.items())
        rates = {a: h.failed / h.calls for a, h in nodes if h.calls >= self.min_calls}
        # at most half the nodes out *by rate*: a node out for a streak (refused connects, lost
        # races) is out for a reason of its own and must not shield a node failing by rate
        budget = len(nodes) // 2 - sum(1 for _, h in nodes if h.strikes and not h.usable(now))
        total, judged = sum(rates.values()), len(rates)
        for address, rate in sorted(rates.items(), key=lambda item: -item[1]):
            peers = (total - rate) / (judged - 1) if judged > 1 else 0.0   # the others' mean
            h = self._nodes[address]
            if rate >= self.failure_rate and rate >= 2 * peers and budget > 0 and h.usable(now):
                # a streak of successes between failures must not shorten the next ejection
                h.ejected_until = now + min(self.eject_cap, self.eject_base * 2 ** h.strikes)
                h.strikes = min(h.strikes + 1, 16)
                budget -= 1
                self.rate_ejections += 1
                log.info("ejected node %s for %.1fs: %.0f%% of its calls failed (peers %.0f%%)",
                         address, h.ejected_until - now, rate * 100, peers * 100)
            elif rate < self.failure_rate / 2:
                h.strikes = 0   # recovered: the next ejection starts short again
        for _, h in nodes:
            h.calls = h.failed = 0

    def forget(self, address: str) -> None:
        """The node left the registry: a node that comes back at that address starts afresh."""
        self._nodes.pop(address, None)


def check_stall(conn: Any, now: float, oldest: float, stall: float,
                abandon: Callable[[float], None]) -> float:
    """The liveness check a connection's sweeper runs (gevent's and asyncio's alike): once its
    oldest pending call has waited ``stall``/2, ``conn`` pings its node, and a ping unanswered for
    ``stall`` seconds calls ``abandon(stall)``. Returns when to look again (``inf``: no call waits
    or the check is off)."""
    if not stall or oldest == float("inf"):
        return float("inf")
    if now - oldest < stall / 2:
        return oldest + stall / 2
    conn._check_liveness(now, stall)
    if conn.stalled(now, stall):
        abandon(stall)
    return now + stall / 2
