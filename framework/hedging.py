"""Hedging: an idempotent call that is slow to answer gets a backup copy on another node, and the
first answer wins (Dean and Barroso's "The Tail at Scale"; gRPC's hedging, Kitex's backup requests).

* **When.** A call still unanswered after its method's recent ``quantile`` latency (p99 by
  default: about one call in a hundred is hedged), and at least ``floor`` seconds, sends one
  backup. Never later than half the time the call has left, so the backup has time to answer.
  Until a method has ``min_samples`` answers, its delay is that half.
* **What.** Only methods every node marks ``@idempotent`` (running twice is harmless), only with
  another node to send to, one backup per call (one more, to a third node, when an attempt fails
  while the other is still silent: three attempts at most), and only when the client's retry budget
  (:mod:`framework.budget`) allows: hedges and retries share it, so together they add at most
  about a tenth of the calls to an overloaded cluster. A hedge away from a node already known to
  be failing (ejected, or silent to a ping) is not paid for: it replaces a lost call.
* **After.** The loser is forgotten (its late answer dropped, its frame not sent if still
  queued). A primary that the backup beat counts as a failure for its node's health (three in a
  row eject it for a while, one answer ends the streak), and its node gets a liveness ping: a
  frozen or blackholed node is skipped once the ping goes unanswered (``stall_after``).

The latency estimate is a log-bucket histogram per method, halved every ``window`` seconds, so it
follows the last few seconds; adding a sample costs a bisect and an increment.
"""
from __future__ import annotations

import collections
import math
import threading
from bisect import bisect_left
from typing import Any, Deque, Optional, Tuple

import gevent.event

#: histogram bucket bounds: 0.1 ms * 1.2**i, up to about 24 s
_BOUNDS = [0.0001 * 1.2 ** i for i in range(68)]


class HedgeDue(Exception):
    """Not an error: a call reached its hedge time unanswered and is still in flight as ``rid`` on
    ``conn``; its answer goes to ``handle`` until ``conn.follow(due, slot)`` sends it to a race."""

    def __init__(self, conn: Any, rid: int, handle: Any):
        super().__init__(rid)
        self.conn, self.rid, self.handle = conn, rid, handle


class Hedging:
    """How a client hedges. ``Client(hedging=False)`` turns hedging off."""

    def __init__(self, quantile: float = 0.99, floor: float = 0.01, window: float = 1.0,
                 min_samples: int = 20):
        if not 0.0 < quantile < 1.0:
            raise ValueError("quantile must be between 0 and 1")
        self.quantile, self.floor, self.window, self.min_samples = quantile, floor, window, min_samples
        self.sent = 0     # backups sent
        self.won = 0      # backups that answered first

    def tail(self) -> "Tail":
        return Tail(self)


class Tail:
    """One method's recent latencies, and the hedge delay they give."""

    __slots__ = ("policy", "counts", "settle_at", "decay_at", "delay")

    def __init__(self, policy: Hedging):
        self.policy = policy
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.settle_at = 0.0     # when the delay is recomputed next (every sample until it has one)
        self.decay_at = 0.0      # when the counts are halved next
        self.delay = math.inf    # seconds; inf until there are enough samples

    def add(self, seconds: float, now: float) -> None:
        self.counts[bisect_left(_BOUNDS, seconds)] += 1
        if now >= self.settle_at:
            self._settle(now)

    def _settle(self, now: float) -> None:
        policy, counts = self.policy, self.counts
        samples = sum(counts)
        if samples >= policy.min_samples:
            rank, seen = policy.quantile * samples, 0
            for i, count in enumerate(counts):
                seen += count
                if seen >= rank:
                    bound = _BOUNDS[i] if i < len(_BOUNDS) else math.inf
                    self.delay = max(policy.floor, bound)
                    break
        if now >= self.decay_at:
            self.decay_at = now + policy.window
            for i, count in enumerate(counts):
                counts[i] = count >> 1
        self.settle_at = self.decay_at if self.delay < math.inf else now

    def hedge_at(self, now: float, remaining: float) -> float:
        """When a call sent at ``now`` with ``remaining`` seconds left sends its backup."""
        delay = remaining * 0.5
        return now + (self.delay if self.delay < delay else delay)


class Answers:
    """The answers of one call's attempts, in arrival order, each as ``(tag, value)``: ``value`` is
    the response object or the attempt's error. Attempts deliver through :meth:`slot`."""

    __slots__ = ("got", "event")

    def __init__(self, green: bool):
        self.got: Deque[Tuple[int, Any]] = collections.deque()
        # the gevent world delivers from the hub: its Event may be set there
        self.event = gevent.event.Event() if green else threading.Event()

    def slot(self, tag: int) -> "_Slot":
        return _Slot(self, tag)

    def wait(self, timeout: float) -> Optional[Tuple[int, Any]]:
        """The next answer, or None when ``timeout`` passed first."""
        if not self.got:
            self.event.clear()
            if not self.got:
                self.event.wait(max(0.0, timeout))
        return self.got.popleft() if self.got else None


class _Slot:
    """Where one attempt's answer goes: a connection calls ``switch(value)`` as it would a waiter's."""

    __slots__ = ("answers", "tag")

    def __init__(self, answers: Answers, tag: int):
        self.answers, self.tag = answers, tag

    def switch(self, value: Any) -> None:
        self.answers.got.append((self.tag, value))
        self.answers.event.set()
