"""Node health: which of a service's nodes the balancer may pick right now.

The balancer asks one question, :meth:`Health.usable`, and the client reports every call's outcome
with :meth:`Health.record`. Two signals answer it:

* **Outlier ejection.** Consecutive failures eject a node for a backoff that doubles up to
  ``eject_cap``; one success takes it back. A node whose connect is refused, or whose connection
  died, is ejected at once.
* **Stall.** A node that leaves a liveness ping unanswered is frozen, paused or blackholed, whatever
  its lease says. The transport sends the pings (a node answers them without running a handler);
  ``stalled(address, now)`` reports what it saw.

If every node is unusable, the client tries one anyway: a guess beats certain failure.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict

log = logging.getLogger(__name__)


class NodeHealth:
    """Outlier ejection for one node."""

    __slots__ = ("failures", "ejected_until", "ejections")

    def __init__(self):
        self.failures = 0
        self.ejected_until = 0.0
        self.ejections = 0

    def usable(self, now: float) -> bool:
        return now >= self.ejected_until

    def success(self) -> None:
        if self.failures:
            self.failures = 0
            self.ejections = 0

    def failure(self, now: float, threshold: int, base: float, cap: float) -> bool:
        """Record a failure; returns True when this failure ejected the node."""
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
                 eject_threshold: int = 3, eject_base: float = 0.5, eject_cap: float = 10.0):
        self.stalled = stalled
        self.eject_threshold = eject_threshold
        self.eject_base, self.eject_cap = eject_base, eject_cap
        self._nodes: Dict[str, NodeHealth] = {}

    def usable(self, address: str, now: float) -> bool:
        h = self._nodes.get(address)
        if h is not None and not h.usable(now):
            return False
        return not self.stalled(address, now)

    def record(self, address: str, ok: bool, eject_now: bool = False) -> None:
        """One call's outcome; ``eject_now``: the node is certainly unreachable."""
        if ok:
            h = self._nodes.get(address)
            if h is not None and h.failures:
                h.success()
            return
        h = self._nodes.get(address)
        if h is None:
            h = self._nodes.setdefault(address, NodeHealth())
        threshold = 1 if eject_now else self.eject_threshold
        if h.failure(time.monotonic(), threshold, self.eject_base, self.eject_cap):
            log.info("ejected node %s for %.1fs", address, h.ejected_until - time.monotonic())

    def forget(self, address: str) -> None:
        """The node left the registry: a node that comes back at that address starts afresh."""
        self._nodes.pop(address, None)
