"""Balancing: pure policies that pick one node from a snapshot. No I/O, no locks on the hot path."""
from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence, TypeVar

T = TypeVar("T")


class RoundRobin:
    """Cycles through the candidates; ``next()`` on itertools.count is atomic under the GIL."""

    def __init__(self):
        self._counter = itertools.count()

    def pick(self, candidates: Sequence[T], usable: Optional[Callable[[T], bool]] = None) -> Optional[T]:
        n = len(candidates)
        if not n:
            return None
        start = next(self._counter)
        if usable is None:
            return candidates[start % n]
        for i in range(n):
            node = candidates[(start + i) % n]
            if usable(node):
                return node
        return None
