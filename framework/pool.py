"""Connection pool: one persistent, multiplexed :class:`~framework.transport.Connection` per node
address, opened on first use and replaced once it dies or its node goes away."""
from __future__ import annotations

import ssl
import threading
from typing import Dict, Optional, Union

from . import protocol
from .errors import NotSent
from .tls import client_tls_context
from .transport import Connection


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
        self._conns: Dict[str, Connection] = {}
        self._locks: Dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.closed = False

    def get(self, address: str, timeout: float) -> Connection:
        conn = self._conns.get(address)
        if conn is not None and conn.alive and conn.accepting:
            return conn
        with self._lock:
            lock = self._locks.setdefault(address, threading.Lock())
        with lock:  # one connect per node at a time; the others reuse its result
            conn = self._conns.get(address)
            if conn is not None and conn.alive and conn.accepting:
                return conn
            if self.closed:
                raise NotSent("client is closed")
            conn = Connection.open(address, min(timeout, self.connect_timeout), self.max_frame,
                                   self.tls, self.write_stall)
            self._conns[address] = conn
            return conn

    def stalled(self, address: str, now: float) -> bool:
        """True while the node at ``address`` leaves a liveness ping unanswered (see
        :meth:`Connection.stalled`)."""
        conn: Optional[Connection] = self._conns.get(address)
        return bool(conn is not None and self.stall_after and conn.stalled(now, self.stall_after))

    def forget(self, address: str) -> None:
        """The node left the registry: retire its connection (calls in flight still get their
        answers - a draining node sends them)."""
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn.retire()

    def close(self) -> None:
        self.closed = True
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
