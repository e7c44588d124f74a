"""etcd connections: the step between an etcd request and the TCP (or TLS) connection it travels on.

:class:`Connections` keeps up to ``max_idle`` idle HTTP/1.1 keep-alive connections per endpoint, so a
lease keepalive, a put or a list reuses one instead of paying a TCP connect - and with TLS a full
handshake - every time. One connection per request made 10,000 nodes at TTL 10 open about 3,000
connections a second to etcd; with reuse a node holds one.

The rules are urllib3's, for the same reasons:

* a connection goes back to the pool only after its response was read to the end and did not say
  it closes; an error, a partial read or ``Connection: close`` closes it instead;
* more than ``max_idle`` connections may be busy at once; the extra ones are closed on return;
* etcd closes idle connections when it restarts (a proxy may on an idle timeout). A request that
  fails on a *reused* connection before any response arrived is sent once more, on a fresh
  connection to the same endpoint. A failure on a fresh connection is the caller's: it moves on to
  the next endpoint, exactly as without the pool;
* after ``fork()`` the child shares the parent's sockets. The child drops every inherited idle
  connection and closes only its own file descriptor - never ``shutdown()``, which would cut the
  parent's connection too - and never returns one to the pool.

Safe from threads and greenlets: the idle lists are guarded by a ``threading.Lock`` (gevent's in a
patched process), held only to take or give back a connection, never across I/O. A watch gets a
connection of its own (``stream=True``) that is counted but never pooled.
"""
from __future__ import annotations

import http.client
import logging
import os
import ssl
import threading
import weakref
from typing import Dict, List, Mapping, Optional, Tuple, Union

log = logging.getLogger(__name__)

#: what a request on a reused connection raises when etcd had closed it while it was idle; over
#: TLS an abrupt close shows as an SSL EOF rather than a reset (etcd restarting does that)
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
         ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class _Tagged:
    """What the pool needs to know about one of its connections."""
    endpoint = ""
    #: the process that connected it; any other process must not use it (see the module docstring)
    opened_by = 0


class _HTTP(_Tagged, http.client.HTTPConnection):
    pass


class _HTTPS(_Tagged, http.client.HTTPSConnection):
    pass


Connection = Union[_HTTP, _HTTPS]


class Connections:
    """The connections of one :class:`~framework.etcd.client.Etcd`: idle keep-alive ones per
    endpoint, plus the counters ``opened`` (TCP connections made, watches included) and
    ``requests`` (HTTP requests sent). ``keep_alive=False`` gives every request its own connection."""

    #: idle connections kept per endpoint; more may be busy at once (closed when they come back)
    max_idle = 4

    def __init__(self, tls: Optional[ssl.SSLContext] = None, keep_alive: bool = True,
                 max_idle: Optional[int] = None):
        self.tls = tls
        self.keep_alive = keep_alive
        if max_idle is not None:
            self.max_idle = max_idle
        self.opened = 0
        self.requests = 0
        self._idle: Dict[str, List[Connection]] = {}
        self._lock = threading.Lock()
        _LIVE.add(self)

    def request(self, endpoint: str, path: str, payload: str, headers: Mapping[str, str],
                timeout: float, stream: bool = False) -> Tuple[Connection, http.client.HTTPResponse]:
        """POST ``payload`` to ``endpoint``; returns the connection and the response, its body
        unread. Give the connection back with :meth:`release` once the body is read, else close it.
        Raises ``OSError`` or ``http.client.HTTPException`` (the connection is closed then)."""
        conn = None if stream or not self.keep_alive else self._take(endpoint, timeout)
        if conn is not None:
            try:
                return conn, self._send(conn, path, payload, headers)
            except STALE as exc:
                log.debug("idle connection to etcd %s was closed (%s); sending on a new one",
                          endpoint, exc)
                self.discard(conn)
            except BaseException:
                self.discard(conn)
                raise
        conn = self._new(endpoint, timeout)
        try:
            return conn, self._send(conn, path, payload, headers)
        except BaseException:
            self.discard(conn)
            raise

    def release(self, conn: Connection, resp: http.client.HTTPResponse) -> None:
        """``resp`` was read to the end: keep ``conn`` for the next request, or close it."""
        reusable = (self.keep_alive and resp.isclosed() and not resp.will_close
                    and conn.sock is not None and conn.opened_by == os.getpid())
        if reusable:
            with self._lock:
                idle = self._idle.setdefault(conn.endpoint, [])
                if len(idle) < self.max_idle:
                    idle.append(conn)
                    return
        self.discard(conn)

    def discard(self, conn: Connection) -> None:
        """Close ``conn`` for good (an inherited one without touching the parent's connection)."""
        if conn.opened_by and conn.opened_by != os.getpid():
            _close_descriptor(conn)
        else:
            conn.close()

    def idle(self) -> int:
        """How many idle connections the pool holds now, all endpoints together."""
        with self._lock:
            return sum(len(conns) for conns in self._idle.values())

    def close(self) -> None:
        """Close the idle connections. The pool stays usable: connections busy meanwhile still
        come back to it, and a later request connects again."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                self.discard(conn)

    # ---- internals ---------------------------------------------------------------------------

    def _take(self, endpoint: str, timeout: float) -> Optional[Connection]:
        with self._lock:
            idle = self._idle.get(endpoint)
            conn = idle.pop() if idle else None   # the most recently used: the least likely closed
        if conn is None:
            return None
        if conn.opened_by != os.getpid():   # a fork the hook missed (C code calling fork())
            _close_descriptor(conn)
            return None
        conn.timeout = timeout
        conn.sock.settimeout(timeout)
        return conn

    def _new(self, endpoint: str, timeout: float) -> Connection:
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")
        conn: Connection
        if self.tls is not None:
            conn = _HTTPS(host, int(port), timeout=timeout, context=self.tls)
        else:
            conn = _HTTP(host, int(port), timeout=timeout)
        conn.endpoint = endpoint
        return conn

    def _send(self, conn: Connection, path: str, payload: str,
              headers: Mapping[str, str]) -> http.client.HTTPResponse:
        if conn.sock is None:
            # connect here rather than inside request() so the counter sees every new connection
            conn.connect()
            conn.opened_by = os.getpid()
            with self._lock:
                self.opened += 1
        conn.request("POST", path, payload, dict(headers))
        with self._lock:
            self.requests += 1
        return conn.getresponse()

    def _forget_inherited(self) -> None:
        """In a forked child: the idle connections are the parent's; let go of them."""
        # a thread of the parent may have held the lock at fork time; it does not exist here
        self._lock = threading.Lock()
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                _close_descriptor(conn)


def _close_descriptor(conn: Connection) -> None:
    """Close this process's descriptor of ``conn``'s socket and nothing else: no ``shutdown()``,
    no TLS close_notify, so the process that shares the socket keeps a working connection."""
    sock, conn.sock = conn.sock, None
    if sock is not None:
        try:
            os.close(sock.detach())
        except OSError:
            pass


#: every live pool, so a forked child can find the connections it inherited; weak, so a pool
#: still goes away with its Etcd
_LIVE: "weakref.WeakSet[Connections]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_LIVE):
        pool._forget_inherited()


if hasattr(os, "register_at_fork"):   # POSIX; there is no fork() elsewhere
    os.register_at_fork(after_in_child=_after_fork_in_child)
