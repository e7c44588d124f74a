"""Load for tests: threads calling a function over and over, every outcome recorded with its time.

In a gevent-patched process the threads are greenlets, so the same class drives both worlds.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable, List, NamedTuple, Optional

from .waiting import wait_until

__all__ = ["Load", "Outcome"]


class Outcome(NamedTuple):
    """One finished call: when it finished (``time.monotonic()``), how long it took, and its
    result, or ``repr`` of its exception."""
    at: float
    seconds: float
    value: Any


class Load:
    """``callers`` threads calling ``fn()`` until stopped (or each ``per_caller`` times).

    ``ok`` and ``errors`` list every :class:`Outcome` in finishing order; ``by_result`` counts
    the ok results (hashable ones: a pid tells which node answered). An exception is recorded,
    never raised: a test asserts ``load.errors == []``.

    ``with Load(fn) as load:`` starts the callers and stops them on exit (each finishes its
    call in progress; ``join_timeout`` bounds the wait for them); ``run(seconds)`` does it all
    for a fixed window.
    """

    def __init__(self, fn: Callable[[], Any], callers: int = 8, per_caller: Optional[int] = None,
                 join_timeout: Optional[float] = 20.0):
        self.fn = fn
        self.per_caller = per_caller
        self.join_timeout = join_timeout
        self.ok: List[Outcome] = []
        self.errors: List[Outcome] = []
        self.by_result: Counter = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(callers)]

    def _run(self) -> None:
        made = 0
        while not self._stop.is_set() and (self.per_caller is None or made < self.per_caller):
            made += 1
            started = time.monotonic()
            try:
                result = self.fn()
            except Exception as exc:  # recorded: the test asserts on the errors
                with self._lock:
                    self.errors.append(Outcome(time.monotonic(), time.monotonic() - started,
                                               repr(exc)))
            else:
                with self._lock:
                    self.ok.append(Outcome(time.monotonic(), time.monotonic() - started, result))
                    try:
                        self.by_result[result] += 1
                    except TypeError:  # an unhashable result is listed in ok, not counted
                        pass

    @property
    def calls(self) -> int:
        """Calls finished so far, ok or not."""
        return len(self.ok) + len(self.errors)

    def values(self, since: int = 0) -> List[Any]:
        """The ok results, from the ``since``-th on (a ``len(load.ok)`` taken earlier)."""
        return [outcome.value for outcome in self.ok[since:]]

    def wait_calls(self, more: int, timeout: float = 10.0) -> None:
        """Wait until ``more`` calls (ok or not) have finished after this one was made."""
        target = self.calls + more
        wait_until(lambda: self.calls >= target, timeout=timeout, message=f"{more} more calls")

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Ask the callers to stop and wait for the call each has in progress."""
        self._stop.set()
        self.join()

    def join(self) -> None:
        """Wait (up to ``join_timeout`` each) for the callers to end by themselves: with
        ``per_caller``, once each made its calls."""
        for t in self._threads:
            t.join(self.join_timeout)

    def run(self, seconds: Optional[float] = None) -> "Load":
        """Start, let the callers run for ``seconds`` (None: until each made ``per_caller``
        calls), stop; returns self for its figures."""
        self.start()
        if seconds is None:
            self.join()
        else:
            self._stop.wait(seconds)   # a fixed window of load, not a wait for a condition
            self.stop()
        return self

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
