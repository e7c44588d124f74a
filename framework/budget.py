"""Retry budget: retries may add at most a fraction of a client's calls, so an overloaded or broken
cluster gets about the calls that were offered, not a multiple of them (a retry storm).

The client notes every answered call and asks before each retry or hedge (a call that never left
the client, ``NotSent``, is re-sent without asking: no node saw it). Allowed are ``ratio`` of
the answered calls plus ``floor`` a second, so a quiet client can still ride out one node's
failure. Counting answers, not attempts (as gRPC's throttling does), makes the budget shrink when
most calls fail: a cluster that refuses half its calls earns half the retries. Unused allowance
is saved up to ``burst`` plus ``ratio`` of the calls of about the last ``memory`` seconds, so a
node that dies under a busy client may have all its calls in flight re-sent at once; ``burst``
(50) also covers a client that has only just started (16 callers and a blackholed node needed
more than 20). This is Finagle's retry budget and gRPC's retry throttling (A6) in one token
bucket. A call refused a retry fails with :class:`~framework.errors.ServiceUnavailable`,
whose cause is the error it would have retried.
"""
from __future__ import annotations

import math
import time


class RetryBudget:
    """Thread/greenlet safe without a lock: a lost update under a race only blurs the count."""

    def __init__(self, ratio: float = 0.1, floor: float = 10.0, burst: float = 50.0,
                 memory: float = 10.0):
        self.ratio, self.floor, self.burst, self.memory = ratio, floor, burst, memory
        self.calls = 0            # answered calls since the last settlement (the client bumps it)
        self.refused = 0          # retries refused so far
        self.hedges_refused = 0   # hedges refused so far (those calls just waited on)
        self._tokens = burst
        self._recent = 0.0        # calls of about the last ``memory`` seconds (decaying sum)
        self._stamp = time.monotonic()

    def withdraw(self, now: float, hedge: bool = False) -> bool:
        """May one more retry (or, with ``hedge``, a hedge) go out now? Takes it from the budget
        when it may. A refused hedge is not counted in ``refused``: the call goes on waiting."""
        elapsed = max(0.0, now - self._stamp)
        self._recent = self._recent * math.exp(-elapsed / self.memory) + self.calls
        cap = self.burst + self.ratio * self._recent
        tokens = min(cap, self._tokens + self.calls * self.ratio + elapsed * self.floor)
        self.calls, self._stamp = 0, now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        if hedge:
            self.hedges_refused += 1
        else:
            self.refused += 1
        return False
