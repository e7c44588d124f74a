"""Transport: one persistent, multiplexed connection per node, and the health record of each node.

A :class:`Connection` carries any number of concurrent calls. Each request gets a fresh integer id;
a reader worker matches responses by id, so they may come back in any order. Socket failures become
the errors of :mod:`framework.errors` here and nowhere else:

* could not connect, or the connection was already known dead -> :class:`NotSent` (safe to retry);
* broke after the request was written -> :class:`ConnectionLost` (the node may have run it);
* no answer in time -> :class:`Timeout`.

Like discovery, it uses the process's own ``socket`` and ``threading`` modules, so it works with OS
threads in a plain program and with greenlets in a gevent-patched one.
"""
from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from typing import Any, Dict, Optional

from . import protocol
from .errors import ConnectionLost, NotSent, ProtocolError, RpcError, Timeout, from_error_object

log = logging.getLogger(__name__)

_GOAWAY = "$goaway"


class _Pending:
    __slots__ = ("event", "response")

    def __init__(self):
        self.event = threading.Event()
        self.response: Any = None


class Connection:
    """A client connection to one node. Create with :meth:`open`."""

    def __init__(self, address: str, sock: socket.socket, max_frame: int = protocol.MAX_FRAME):
        self.address = address
        self.sock = sock
        self.max_frame = max_frame
        self.alive = True           # False once the socket failed or closed
        self.accepting = True       # False after the node said it is going away
        self._ids = itertools.count(1)
        self._pending: Dict[int, _Pending] = {}
        self._write_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, name=f"framework-conn-{address}",
                                        daemon=True)
        self._reader.start()

    @classmethod
    def open(cls, address: str, timeout: float, max_frame: int = protocol.MAX_FRAME) -> "Connection":
        host, _, port = address.rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        except (OSError, ValueError) as exc:
            raise NotSent(f"cannot connect to {address}: {exc}") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(address, sock, max_frame)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def call(self, method: str, params: Any, timeout: float, token: Optional[str] = None) -> Any:
        """Send one request and wait for its result (or raise its error)."""
        if not self.alive or not self.accepting:
            raise NotSent(f"connection to {self.address} is closed")
        rid = next(self._ids)
        pending = _Pending()
        self._pending[rid] = pending
        frame = protocol.pack(protocol.request(rid, method, params, int(timeout * 1000), token))
        try:
            with self._write_lock:
                self.sock.sendall(frame)
        except OSError as exc:
            self._pending.pop(rid, None)
            self._fail(exc)
            raise ConnectionLost(f"send to {self.address} failed: {exc}") from None
        if not pending.event.wait(timeout):
            self._pending.pop(rid, None)
            raise Timeout(f"no answer from {self.address} within {timeout:.3f}s")
        response = pending.response
        if isinstance(response, RpcError):
            raise response
        if "error" in response:
            raise from_error_object(response["error"])
        return response.get("result")

    def _read_loop(self) -> None:
        reader = protocol.FrameReader(self.max_frame)
        error: Optional[BaseException] = None
        try:
            while True:
                data = self.sock.recv(262144)
                if not data:
                    break
                for body in reader.feed(data):
                    msg = protocol.unpack_body(body)
                    if not isinstance(msg, dict):
                        raise ProtocolError("response is not a map")
                    pending = self._pending.pop(msg.get("id"), None)
                    if pending is not None:
                        pending.response = msg
                        pending.event.set()
                    elif msg.get("method") == _GOAWAY:
                        log.info("node %s is going away", self.address)
                        self.accepting = False
        except (OSError, RpcError) as exc:
            error = exc
        self._fail(error)

    def _fail(self, error: Optional[BaseException]) -> None:
        if self.alive:
            self.alive = False
            try:
                self.sock.close()
            except OSError:
                pass
        lost = ConnectionLost(f"connection to {self.address} lost"
                              + (f": {error}" if error else " (closed by peer)"))
        while self._pending:
            try:
                _, pending = self._pending.popitem()
            except KeyError:
                break
            pending.response = lost
            pending.event.set()

    def close(self) -> None:
        if self.alive:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._fail(None)


class NodeHealth:
    """Outlier ejection for one node: consecutive failures eject it for a backoff that doubles up to
    ``max_ejection``; one success takes it back. A node whose connect is refused is ejected at once."""

    __slots__ = ("failures", "ejected_until", "ejections")

    def __init__(self):
        self.failures = 0
        self.ejected_until = 0.0
        self.ejections = 0

    def usable(self, now: float) -> bool:
        return now >= self.ejected_until

    def success(self) -> None:
        if self.failures:
            self.failures = 0
            self.ejections = 0

    def failure(self, now: float, threshold: int, base: float, cap: float) -> bool:
        """Record a failure; returns True when this failure ejected the node."""
        self.failures += 1
        if self.failures >= threshold:
            self.ejected_until = now + min(cap, base * (2 ** self.ejections))
            self.ejections = min(self.ejections + 1, 16)
            self.failures = 0
            return True
        return False


class Pool:
    """Connections and health records keyed by node address. Thread/greenlet safe."""

    def __init__(self, connect_timeout: float = 1.0, max_frame: int = protocol.MAX_FRAME,
                 eject_threshold: int = 3, eject_base: float = 0.5, eject_cap: float = 10.0):
        self.connect_timeout = connect_timeout
        self.max_frame = max_frame
        self.eject_threshold = eject_threshold
        self.eject_base, self.eject_cap = eject_base, eject_cap
        self._conns: Dict[str, Connection] = {}
        self._health: Dict[str, NodeHealth] = {}
        self._locks: Dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.closed = False

    def health(self, address: str) -> NodeHealth:
        h = self._health.get(address)
        if h is None:
            h = self._health.setdefault(address, NodeHealth())
        return h

    def usable(self, address: str, now: float) -> bool:
        h = self._health.get(address)
        return h is None or h.usable(now)

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
            conn = Connection.open(address, min(timeout, self.connect_timeout), self.max_frame)
            self._conns[address] = conn
            return conn

    def record(self, address: str, ok: bool, eject_now: bool = False) -> None:
        h = self.health(address)
        if ok:
            h.success()
            return
        threshold = 1 if eject_now else self.eject_threshold
        if h.failure(time.monotonic(), threshold, self.eject_base, self.eject_cap):
            log.info("ejected node %s for %.1fs", address, h.ejected_until - time.monotonic())

    def forget(self, address: str) -> None:
        """The node left the registry: drop its connection and health record."""
        conn = self._conns.pop(address, None)
        self._health.pop(address, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
