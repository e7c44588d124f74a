"""Balancing: pure policies that pick one node from a snapshot. No I/O, no locks on the hot path.

Every policy has the same small surface, so the client treats them alike:

* ``pick(candidates, usable=None, weights=None)`` -> a node, or None when ``usable`` refuses all
  of them; ``weights``: cumulative weights of the candidates (:mod:`framework.routing`), None when
  they are equal;
* ``begin(node)`` -> a token the client hands back to ``end(token, seconds, ok)`` once the call is
  over (:class:`RoundRobin` keeps no per-call state, so both are no-ops);
* ``forget(node)`` when a node leaves the registry.

``usable`` is the client's :meth:`framework.health.Health.usable`: policies pick among healthy nodes
and know nothing of ejection or stalls themselves.
"""
from __future__ import annotations

import bisect
import itertools
import math
import random
import time
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")


class RoundRobin:
    """Cycles through the candidates; ``next()`` on itertools.count is atomic under the GIL."""

    def __init__(self):
        self._counter = itertools.count()

    def pick(self, candidates: Sequence[T], usable: Optional[Callable[[T], bool]] = None,
             weights: Optional[Sequence[float]] = None) -> Optional[T]:
        n = len(candidates)
        if not n:
            return None
        if weights is not None:   # weighted: a random draw, which keeps the shares exact
            node = candidates[_draw(weights, random.random())]
            if usable is None or usable(node):
                return node
        start = next(self._counter)
        if usable is None:
            return candidates[start % n]
        for i in range(n):
            node = candidates[(start + i) % n]
            if usable(node):
                return node
        return None

    def begin(self, node: Any) -> None:
        return None

    def end(self, token: Any, seconds: float, ok: bool, now: Optional[float] = None) -> None:
        pass

    def forget(self, node: Any) -> None:
        pass


class _Load:
    """What P2C knows about one node: calls outstanding and a peak-sensitive EWMA of latency."""

    __slots__ = ("outstanding", "ewma", "stamp")

    def __init__(self):
        self.outstanding = 0
        self.ewma = 0.0      # seconds; 0 until the first answer, so a new node is tried at once
        self.stamp = 0.0     # monotonic time of the last update


class P2C:
    """Power of two choices: sample two usable nodes at random, send to the less loaded one.
    (When the route gives weights that differ, a weighted draw instead: :meth:`_pick_weighted`.)

    Less loaded means fewer calls outstanding (sent, not yet answered: least outstanding requests,
    as Finagle's default balancer); on a tie, the lower latency EWMA. Outstanding counts react at
    once under concurrency - a slow node keeps its calls longer, so it gets fewer - and the EWMA
    tells nodes apart with one caller, when nothing is ever outstanding at pick time. (The product
    ``ewma * (outstanding + 1)`` of Finagle's and go-zero's peak-EWMA balancers did worse here with
    64 callers on equal nodes - each latency peak skews the split until it decays; see
    docs/performance.md.)
    The EWMA jumps to a slower observation at once (peak) and decays toward faster ones with time
    constant ``decay`` seconds; it also decays while a node is not picked, so a node that had one
    bad moment gets traffic again. A failed call counts as ``penalty`` seconds, so a node that fails
    fast does not attract traffic (ejection, in :mod:`framework.health`, handles nodes that fail
    repeatedly).

    ``key(node)`` names a node (default: its ``address`` attribute, else the node itself).
    Counters are updated without a lock: under the GIL a lost update only blurs the estimate, and
    ``outstanding`` is clamped at zero.
    """

    def __init__(self, key: Optional[Callable[[Any], Hashable]] = None, decay: float = 0.5,
                 penalty: float = 1.0, rng: Optional[random.Random] = None):
        self.key = key or _address
        self.decay = decay
        self.penalty = penalty
        self._random = (rng or random.Random()).random
        self._loads: Dict[Hashable, _Load] = {}

    def _load(self, node: Any) -> _Load:
        key = self.key(node)
        load = self._loads.get(key)
        if load is None:
            load = self._loads.setdefault(key, _Load())
        return load

    def cost(self, node: Any, now: Optional[float] = None) -> Tuple[int, float]:
        """``(outstanding, latency EWMA now)``: the lower one gets the call."""
        load = self._load(node)
        ewma = load.ewma
        if ewma:
            ewma *= _decay((time.monotonic() if now is None else now) - load.stamp, self.decay)
        return load.outstanding, ewma

    def pick(self, candidates: Sequence[T], usable: Optional[Callable[[T], bool]] = None,
             weights: Optional[Sequence[float]] = None) -> Optional[T]:
        n = len(candidates)
        if weights is not None and n > 1:
            return self._pick_weighted(candidates, usable, weights)
        if n > 1:
            rand = self._random
            i = int(rand() * n)
            j = int(rand() * (n - 1))
            if j >= i:
                j += 1  # two distinct nodes, uniformly
            a, b = candidates[i], candidates[j]
            # the common case asks ``usable`` about the two sampled nodes only
            if usable is None or (usable(a) and usable(b)):
                now = time.monotonic()
                return a if self.cost(a, now) <= self.cost(b, now) else b
        if usable is not None:
            candidates = [c for c in candidates if usable(c)]
            if len(candidates) > 1:
                return self.pick(candidates)
        return candidates[0] if candidates else None

    def _pick_weighted(self, candidates: Sequence[T], usable: Optional[Callable[[T], bool]],
                       weights: Sequence[float]) -> Optional[T]:
        """A draw in proportion to weight, so the shares follow the weights exactly (a load
        comparison, as in P2C, would tilt them: with nothing outstanding the heavier node would
        win every pair). Should the drawn node be unusable, P2C picks among the others."""
        node = candidates[_draw(weights, self._random())]
        if usable is None or usable(node):
            return node
        return self.pick(candidates, usable)

    def begin(self, node: Any) -> _Load:
        load = self._load(node)
        load.outstanding += 1
        return load

    def end(self, token: _Load, seconds: float, ok: bool, now: Optional[float] = None) -> None:
        """The call begun with ``token`` took ``seconds``; ``now``: the caller's clock reading,
        if it has one (saves reading it again)."""
        load = token
        load.outstanding = max(0, load.outstanding - 1)
        if not ok:
            seconds = max(seconds, self.penalty)
        if now is None:
            now = time.monotonic()
        if seconds >= load.ewma:
            load.ewma = seconds  # peak: a slowdown shows at once
        else:
            w = _decay(now - load.stamp, self.decay)
            load.ewma = load.ewma * w + seconds * (1.0 - w)
        load.stamp = now

    def forget(self, node: Any) -> None:
        self._loads.pop(self.key(node), None)


def _decay(elapsed: float, tau: float) -> float:
    """exp(-elapsed/tau); between calls ``elapsed`` is tiny, where 1 - x is exact enough and cheaper."""
    if elapsed <= 0:
        return 1.0
    x = elapsed / tau
    return 1.0 - x if x < 0.001 else math.exp(-x)


def _draw(cumulative: Sequence[float], r: float) -> int:
    """The index a uniform ``r`` in [0, 1) falls on, in proportion to weight."""
    return min(bisect.bisect_right(cumulative, r * cumulative[-1]), len(cumulative) - 1)


def _address(node: Any) -> Hashable:
    return getattr(node, "address", node)
