"""Retry pacing: capped exponential backoff with full jitter, shared by every loop that retries etcd."""
from __future__ import annotations

import random


class Backoff:
    """``next()`` returns the next delay in seconds: uniform in [base/2, min(cap, base*2**n)]."""

    def __init__(self, base: float = 0.1, cap: float = 5.0):
        self.base, self.cap = base, cap
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return random.uniform(min(self.base / 2, ceiling), ceiling)

    def reset(self) -> None:
        self.attempt = 0
