"""Load shedding: a node that cannot keep up refuses new calls at once with ``Overloaded``
(-32003, "not processed") instead of queueing them until their deadlines pass.

Queued calls that expire are the cause of overload collapse: the node spends its time on calls
whose callers have already given up, so goodput falls far below capacity. The shedder keeps the
queue to about ``target`` seconds of work, at the door (as Facebook's CoDel-based shedding,
go-zero's adaptive shedder and toobusy for event loops do):

* **Detect.** A node is saturated when new calls wait longer than ``target`` to start. They wait
  in two places, and each has its own signal, judged every ``interval`` seconds:

  - for a worker, when every worker is busy: the window's *smallest* queue delay (read -> start)
    stays above ``target``, a standing queue rather than a burst;
  - for the node's one thread, when handlers keep the CPU: bytes then wait in the kernel, unseen,
    while the event loop is held. A probe measures how late a short timer fires (the loop lag);
    a window's largest lag above ``target`` means new calls waited that long just to be read.

* **Limit.** The calls that started in a saturated window are what the node can do per second,
  so at most ``capacity * target`` calls may wait for a worker; a new call beyond that is refused
  before it is queued (cheap: no handler runs, the reader answers it).
* **Recover.** A window with neither signal above a quarter of ``target`` lifts the limit.

A burst after an idle spell is queued, not refused: only a saturated window sets a limit. Clients
send a refused call elsewhere, within their retry budget.
"""
from __future__ import annotations

import math
import time
from typing import Any

import gevent


class Shedder:
    """The admission limit of one node. Greenlet-only state (a node is one gevent thread)."""

    def __init__(self, target: float = 0.05, interval: float = 0.1, min_limit: int = 4,
                 tick: float = 0.01, enabled: bool = True):
        self.target, self.interval, self.min_limit, self.tick = target, interval, min_limit, tick
        self.enabled = enabled    # False: never told of a call, never sets a limit
        self.limit = math.inf     # calls that may wait for a worker; inf while not saturated
        self.shed = 0             # calls refused so far (the node's reader counts them)
        self.window_start = self.window_end = 0.0
        self.least = math.inf     # the window's smallest queue delay
        self.lag = 0.0            # the window's largest loop lag
        self.started = 0          # calls started in the window
        self._probe: Any = None

    def start(self) -> None:
        """Start the loop-lag probe (in the node's gevent thread)."""
        if self._probe is None and self.enabled:
            self._probe = gevent.spawn(self._measure_lag)

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.kill(block=False)
            self._probe = None

    def note(self, received: float, started: float) -> None:
        """A call read at ``received`` started at ``started`` (both ``time.monotonic()``)."""
        delay = started - received
        if delay < self.least:
            self.least = delay
        self.started += 1
        if started >= self.window_end:
            self._judge(started)

    def _measure_lag(self) -> None:
        tick, clock = self.tick, time.monotonic
        while True:
            before = clock()
            gevent.sleep(tick)
            now = clock()
            lag = now - before - tick
            if lag > self.lag:
                self.lag = lag
            if now >= self.window_end:
                self._judge(now)

    def _judge(self, now: float) -> None:
        elapsed, target = now - self.window_start, self.target
        waited = self.least if self.least < math.inf else 0.0
        if (waited > target or self.lag > target) and elapsed > 0:
            self.limit = max(self.min_limit, self.started / elapsed * target)
        elif waited < target / 4 and self.lag < target / 4:
            self.limit = math.inf
        self.window_start, self.window_end = now, now + self.interval
        self.least, self.lag, self.started = math.inf, 0.0, 0
