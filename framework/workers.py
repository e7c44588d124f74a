"""Workers: the node's bounded set of long-lived worker greenlets that run calls.

At most ``size`` calls are queued or running at once; :meth:`Workers.submit` blocks beyond that, so
the connection reader that submits stops reading and TCP pushes back on the sender instead of a queue
growing without bound.
"""
from __future__ import annotations

import collections
import logging
from typing import Any, Callable, List, Optional

import gevent
import gevent.event
import gevent.lock

log = logging.getLogger(__name__)


class Workers:
    """At most ``size`` calls at once, run by long-lived worker greenlets.

    A greenlet spawned per call cost the node its creation, pool bookkeeping and (Python 3.11) a
    fresh frame-stack chunk - an mmap/munmap pair per call. Here calls wait in a FIFO and a running
    worker takes the next one as soon as its call returns, so a burst of calls that do not block
    costs no greenlet switch at all. Before starting a call while others wait, a worker leaves the
    hub a wake-up (:meth:`_dispatch`): the hub only runs it if the call blocks, and then it hands the
    waiting calls to another worker. A call thus never waits behind a blocked one.
    :meth:`submit` blocks while ``size`` calls are queued or running: that is the backpressure.
    """

    def __init__(self, size: int):
        self.size = size
        self._slots = gevent.lock.Semaphore(size)
        self._jobs: collections.deque = collections.deque()
        self.queued = self._jobs       # read-only view for readers: calls waiting for a worker
        self._parked: List[Any] = []   # idle workers, each waiting in hub.switch()
        self._scheduled = False        # a _dispatch is pending in the hub's callbacks
        self.busy = 0
        self._idle = gevent.event.Event()
        self._idle.set()
        self._hub: Any = None

    def __len__(self) -> int:
        return self.busy

    def _take(self) -> None:
        self._slots.acquire()
        self.busy += 1
        if self.busy == 1:
            self._idle.clear()

    def _release(self, _greenlet: Any = None) -> None:
        self.busy -= 1
        if not self.busy:
            self._idle.set()
        self._slots.release()

    def submit(self, fn: Callable, *args: Any) -> None:
        """Queue ``fn(*args)`` for a worker; blocks while ``size`` calls are queued or running."""
        self._take()
        self._jobs.append((fn, args))
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        if self._hub is None:
            self._hub = gevent.get_hub()
        self._scheduled = True
        self._hub.loop.run_callback(self._dispatch)

    def _dispatch(self) -> None:
        """In the hub: calls are waiting and no worker is running them - resume or start one."""
        self._scheduled = False
        if self._jobs:
            if self._parked:
                self._parked.pop().switch()
            else:
                gevent.spawn(self._work)

    def run_here(self, fn: Callable, *args: Any) -> None:
        """``fn(*args)`` in the calling greenlet, counted in ``size`` (blocks while it is full)."""
        self._take()
        try:
            fn(*args)
        except Exception:  # as in _work: fn answers its own errors, so this is a bug
            log.exception("worker: %r failed", fn)
        finally:
            self._release()

    def spawn(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` in its own greenlet (for callers that want ``.get()``), counted in ``size``."""
        self._take()
        greenlet = gevent.spawn(fn, *args)
        greenlet.rawlink(self._release)
        return greenlet

    def _work(self) -> None:
        hub, me, jobs = gevent.get_hub(), gevent.getcurrent(), self._jobs
        while True:
            while jobs:
                fn, args = jobs.popleft()
                if jobs and not self._scheduled:
                    self._schedule()  # runs only if this call blocks: another worker goes on
                try:
                    fn(*args)
                except Exception:  # fn answers its own errors; this is a bug, not the caller's
                    log.exception("worker: %r failed", fn)
                finally:
                    fn = args = None
                    self._release()
            self._parked.append(me)
            hub.switch()

    def join(self, timeout: Optional[float] = None) -> bool:
        return self._idle.wait(timeout)

    def close(self) -> None:
        parked, self._parked = self._parked, []
        for worker in parked:
            worker.kill(block=False)
