"""Connection pool: one persistent, multiplexed :class:`~framework.transport.Connection` per node
address (one per worker of a ``--workers N`` node), opened on first use and replaced once it dies
or its node goes away.

A forked child starts with an empty pool: its inherited connections are the parent's sockets
(:meth:`~framework.transport.Connection.drop_inherited` closes its copies), so it opens its own.
"""
from __future__ import annotations

import itertools
import os
import ssl
import threading
import time
import weakref
from typing import Any, Dict, Optional, Tuple, Union

from . import protocol
from .errors import NotSent
from .tls import client_tls_context
from .transport import Connection

#: every Pool not yet collected, for the fork hook at the end of this module
_live: "weakref.WeakSet[Pool]" = weakref.WeakSet()


class Pool:
    """Connections keyed by node address. Thread/greenlet safe."""

    def __init__(self, connect_timeout: float = 1.0, max_frame: int = protocol.MAX_FRAME,
                 stall_after: float = 0.5, tls: Union[None, str, ssl.SSLContext] = None,
                 write_stall: float = 5.0):
        self.connect_timeout = connect_timeout
        #: client-side TLS for the RPC port: a context, or the path of the CA bundle to verify with
        self.tls = client_tls_context(tls) if isinstance(tls, str) else tls
        #: seconds a call waits before pinging its node, and a ping waits before the node counts
        #: as stalled (frozen/blackholed); 0 disables the check
        self.stall_after = stall_after
        self.max_frame = max_frame
        #: seconds a node may take no byte of a pending write before its connection is given up
        #: (callers never wait for writes: their deadlines bound them)
        self.write_stall = write_stall
        self._conns: Dict[str, Connection] = {}   # address, or "address#i" for a node's i-th
        self._turn = itertools.count()
        self._locks: Dict[str, threading.Lock] = {}   # per key: one connect at a time
        self._failed: Dict[str, Tuple[float, NotSent]] = {}   # per key: its last connect failed
        self._lock = threading.Lock()
        self.closed = False
        _live.add(self)

    def get(self, address: str, timeout: float, ways: Any = 1) -> Connection:
        """The connection to ``address``; ``ways``: the node's ``workers`` (processes sharing its
        port, :mod:`framework.prefork`) - so many connections are kept, or every call would go to
        the one worker that accepted the connection."""
        if ways != 1 and type(ways) is int and ways > 1:
            return self._least_busy(address, timeout, min(2 * ways, 64))
        conn = self._conns.get(address)
        if conn is not None and conn.alive and conn.accepting:
            return conn
        return self._open(address, address, timeout)

    def _least_busy(self, address: str, timeout: float, count: int) -> Connection:
        # The kernel gives each new connection to whichever worker accepts first, so two per
        # worker reach most of them, but rarely evenly (3 and 1, say). Calls go to the connection
        # with the fewest calls in flight: a worker holding more connections answers each of them
        # more slowly, so the least busy connection steers calls to the less loaded worker. Ties
        # (an idle node) take turns.
        best: Optional[Connection] = None
        first = next(self._turn)
        for i in range(count):
            turn = (first + i) % count
            key = f"{address}#{turn}" if turn else address   # stalled() looks at the first
            conn = self._conns.get(key)
            if conn is None or not conn.alive or not conn.accepting:
                return self._open(key, address, timeout)
            if not conn.in_flight:
                return conn
            if best is None or conn.in_flight < best.in_flight:
                best = conn
        return best

    def _open(self, key: str, address: str, timeout: float) -> Connection:
        # One connect per node at a time; the calls that wait for it take its result, a failure
        # too: against a blackholed host, each connecting in turn would make the last caller
        # wait for every connect timeout before its own. The wait is bounded by the caller's time.
        waiting_since = time.monotonic()
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        if not lock.acquire(timeout=max(0.0, timeout)):
            raise NotSent(f"no connection to {address} within {timeout:.3f}s "
                          "(another call was still connecting)")
        try:
            conn = self._conns.get(key)
            if conn is not None and conn.alive and conn.accepting:
                return conn
            failed = self._failed.get(key)
            if failed is not None and failed[0] > waiting_since:
                raise NotSent(f"{failed[1]} (a call connecting at the same time)")
            if self.closed:
                raise NotSent("client is closed")
            pid = os.getpid()
            bound = min(timeout - (time.monotonic() - waiting_since), self.connect_timeout)
            if bound <= 0:
                raise NotSent(f"no time left to connect to {address}")
            try:
                conn = Connection.open(address, bound, self.max_frame, self.tls, self.write_stall)
            except NotSent as exc:
                if bound >= self.connect_timeout:   # not a caller's short time: the host's fault
                    self._failed[key] = (time.monotonic(), exc)
                raise
            self._failed.pop(key, None)
            if os.getpid() != pid:   # a greenlet that forked meanwhile: the socket is shared
                conn.drop_inherited()
                raise NotSent(f"the process forked while connecting to {address}")
            self._conns[key] = conn
            return conn
        finally:
            lock.release()

    def stalled(self, address: str, now: float) -> bool:
        """True while the node at ``address`` leaves a liveness ping unanswered (see
        :meth:`Connection.stalled`)."""
        conn: Optional[Connection] = self._conns.get(address)
        return bool(conn is not None and self.stall_after and conn.stalled(now, self.stall_after))

    def forget(self, address: str) -> None:
        """The node left the registry: retire its connection (calls in flight still get their
        answers - a draining node sends them)."""
        for key in [k for k in list(self._locks) if k == address or k.startswith(address + "#")]:
            self._locks.pop(key, None)   # (a call holding it still releases its own)
            self._failed.pop(key, None)
        for key in [k for k in list(self._conns) if k == address or k.startswith(address + "#")]:
            conn = self._conns.pop(key, None)
            if conn is not None:
                conn.retire()

    def close(self) -> None:
        self.closed = True
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()

    def _after_fork(self) -> None:
        """In a forked child: no connection of the parent's, and fresh locks - one held by another
        thread at fork time would never be released here (only the forking thread survives)."""
        self._lock = threading.Lock()
        self._locks = {}
        self._failed = {}
        self._conns = {}


def _after_fork_in_child() -> None:
    for pool in list(_live):
        pool._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
