"""Waiting for a condition in a test: poll it with a deadline instead of sleeping a guessed time."""
from __future__ import annotations

import time
from typing import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.005,
               message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy, and return that; raise AssertionError
    at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
