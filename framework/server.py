"""Serving: a gevent ``StreamServer`` that turns frames into dispatched calls and calls into frames,
registers the node in etcd, and shuts down in the order that loses no call.

Each connection has a reader greenlet. Requests run in long-lived worker greenlets, at most
``max_concurrency`` at once; when that many run, the reader stops reading, so TCP pushes back on
the sender instead of a queue growing without bound. A lone request (nothing else in flight on
its connection, no call waiting) runs in the reader itself; if it blocks, a new reader takes over
the connection. Responses are written as they complete (out of order) and coalesced: the answers
ready in one turn of the loop go out together, in parts of ``write_part``.

``stop()``: (1) revoke the lease, so clients drop the node within milliseconds; (2) keep serving for
``grace`` seconds, for callers that have not yet seen the removal; (3) tell every connection the
node is going away and answer any later request with GoingAway (-32001: not processed, re-send
elsewhere); (4) wait up to ``drain_timeout`` for calls in flight; (5) close.

A Server needs a gevent-patched process (``python -m framework serve`` patches at startup).
"""
from __future__ import annotations

import collections
import logging
import socket
import ssl
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import gevent
import gevent.event
import gevent.lock
import gevent.pool
from gevent.server import StreamServer

from . import __version__, protocol, record
from .client import Client
from .discovery import DEFAULT_PREFIX, Discovery
from .dispatch import Dispatcher
from .errors import GoingAway, InternalError, ParseError, ProtocolError
from .etcd import Etcd, EtcdConfig
from .httpapi import NodeHttp, sniff
from .metrics import NodeMetrics
from .registry import Registration
from .service import spec_of
from .transport import send_all

log = logging.getLogger(__name__)

_GOAWAY_FRAME = protocol.pack({"jsonrpc": "2.0", "method": protocol.GOAWAY, "params": []})
_PONG_FRAME = protocol.pack({"jsonrpc": "2.0", "id": 0, "result": "pong"})


def primary_address() -> str:
    """The address this machine uses for outbound traffic (no packet is sent: UDP connect only)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


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
        self._parked: List[Any] = []   # idle workers, each waiting in hub.switch()
        self._scheduled = False        # a _dispatch is pending in the hub's callbacks
        self._busy = 0
        self._idle = gevent.event.Event()
        self._idle.set()
        self._hub: Any = None

    def __len__(self) -> int:
        return self._busy

    def _take(self) -> None:
        self._slots.acquire()
        self._busy += 1
        if self._busy == 1:
            self._idle.clear()

    def _release(self, _greenlet: Any = None) -> None:
        self._busy -= 1
        if not self._busy:
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


class _Conn:
    """Server side of one client connection."""

    __slots__ = ("sock", "peer", "out", "out_bytes", "flushing", "drained", "in_flight", "closed",
                 "idle", "slots", "queued", "part", "write_lock", "frames", "frame_began",
                 "reader", "inline", "finished")

    def __init__(self, sock, peer, max_in_flight: int = 1 << 30, queued: Any = (), part: int = 16,
                 max_frame: int = protocol.MAX_FRAME):
        self.sock = sock
        self.peer = peer
        self.out: List[bytes] = []
        self.out_bytes = 0          # queued or being written; bounded by throttle()
        self.flushing = False       # a greenlet is collecting this burst's answers to send them
        self.part = part
        self.write_lock = gevent.lock.Semaphore()   # one sendall at a time: frames never interleave
        self.drained = gevent.event.Event()
        self.in_flight = 0
        self.closed = False
        self.idle = gevent.event.Event()
        self.idle.set()
        # the per-connection in-flight cap: the reader takes a slot per request, the call frees it
        self.slots = gevent.lock.BoundedSemaphore(max_in_flight)
        self.queued = queued   # the node's calls waiting for a worker (Workers._jobs)
        self.frames = protocol.FrameReader(max_frame)   # shared by successive readers
        self.frame_began = time.monotonic()   # when the frame being read began to arrive
        self.reader: Any = None          # the greenlet reading this connection now
        self.inline: Any = None          # the reader while it runs a call itself (Server._read)
        self.finished = gevent.event.Event()   # set once the last reader closed the connection

    def send(self, frame: bytes) -> None:
        # Coalesce: the first writer of a burst flushes everything queued meanwhile in one sendall.
        out = self.out
        out.append(frame)
        self.out_bytes += len(frame)
        if self.flushing:
            # A full part goes out now instead of at the end of the burst: the client decodes
            # these answers on the other core while this node computes the rest. With 64
            # callers this took `bench.quick` from ~26k to ~42k calls/s (docs/performance.md).
            if len(out) >= self.part and self.write_lock.acquire(blocking=False):
                try:
                    self._write()
                finally:
                    self.write_lock.release()
            return
        self.flushing = True
        try:
            # one turn of the loop first when calls are waiting: they run now and queue their
            # frames too, so a burst of responses costs a few sendalls instead of one each (a
            # lone call's answer goes out at once)
            if self.queued:
                gevent.sleep(0)
            with self.write_lock:
                while out and not self.closed:
                    self._write()
        finally:
            self.flushing = False
            self.drained.set()

    def _write(self) -> None:
        out = self.out
        chunk = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        try:
            send_all(self.sock, chunk)
        except OSError:
            self.closed = True
            return
        self.out_bytes -= len(chunk)
        self.drained.set()

    def throttle(self, limit: int) -> None:
        """Wait while more than ``limit`` bytes are queued for a peer that does not read: the call
        keeps its in-flight slot meanwhile, so the reader stops and memory stays bounded."""
        while self.flushing and self.out_bytes > limit and not self.closed:
            self.drained.clear()
            self.drained.wait()


class Server:
    """Serves ``services`` (``@service`` classes) on one port and registers them in etcd.

    ``etcd=None`` uses ``$ETCD_ENDPOINTS`` or 127.0.0.1:2379; ``etcd=False`` serves without
    registering (tests, or a sidecar that registers for you).
    """

    #: seconds to keep serving after deregistration, for callers that have not seen it yet
    grace = 0.5
    #: calls in flight per connection; the reader stops reading that socket at the cap, so one
    #: connection cannot take the whole pool (``max_concurrency`` is the per-node cap)
    max_conn_in_flight = 256
    #: accepted connections at once; past it the node stops accepting (the kernel backlog queues)
    max_connections = 10000
    #: seconds a peer gets to finish a TLS handshake, its first bytes, or a frame it has begun
    #: (slow senders and half-open connections are closed after it; idle ones between frames are not)
    frame_timeout = 30.0
    #: response bytes queued for one connection before its handlers wait for the peer to read
    max_pending_output = 8 * 1024 * 1024
    #: answers per write once a burst is large: sent in parts, so the caller's process works on
    #: the first ones while the node computes the rest (both cores busy, not taking turns)
    write_part = 16
    #: upper bound on waiting for in-flight calls during stop
    drain_timeout = 10.0
    #: after draining, seconds to keep answering late requests with GoingAway before closing
    linger = 0.1

    def __init__(self, services: Sequence[type], host: str = "0.0.0.0", port: int = 0,
                 etcd: Union[None, bool, str, Sequence[str], EtcdConfig] = None, ttl: int = 10,
                 prefix: str = DEFAULT_PREFIX, advertise: Optional[str] = None,
                 max_concurrency: int = 1000, max_frame: int = protocol.MAX_FRAME,
                 token: Optional[str] = None, metadata: Optional[dict] = None,
                 etcd_client: Optional[Etcd] = None, tls: Optional[ssl.SSLContext] = None,
                 client_tls: Optional[ssl.SSLContext] = None,
                 max_conn_in_flight: Optional[int] = None, max_connections: Optional[int] = None,
                 frame_timeout: Optional[float] = None):
        if not services:
            raise ValueError("Server needs at least one service class")
        self.specs = [spec_of(cls) for cls in services]
        self.host, self.port = host, port
        self.ttl = ttl
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.advertise = advertise
        self.max_frame = max_frame
        self.token = token
        self.metadata = dict(metadata or {})
        # tls: server-side context for the RPC port (see transport.server_tls_context);
        # client_tls: how this node's own client (self.client) verifies the nodes it calls
        self.tls = tls
        if tls is not None:
            self.metadata.setdefault("tls", True)
        if max_conn_in_flight is not None:
            self.max_conn_in_flight = max_conn_in_flight
        if max_connections is not None:
            self.max_connections = max_connections
        if frame_timeout is not None:
            self.frame_timeout = frame_timeout
        self.etcd: Optional[Etcd] = None
        if etcd is not False:
            self.etcd = etcd_client or EtcdConfig.coerce(etcd).client()
        self.discovery: Optional[Discovery] = (
            Discovery(self.etcd, self.prefix) if self.etcd is not None else None)
        self.instances = [spec.cls() for spec in self.specs]
        self.client: Optional[Client] = (
            Client(discovery=self.discovery, token=token, tls=client_tls)
            if self.discovery else None)
        for instance in self.instances:
            instance.client = self.client
        self.metrics = NodeMetrics(self)
        self.dispatcher = Dispatcher(self.instances, token=token, observe=self.metrics.observe)
        self._pack = protocol.frame_packer()   # the node's greenlets share one OS thread
        self.pool = Workers(max_concurrency)
        self.registration: Optional[Registration] = None
        self.draining = False      # deregistered: still serving during the grace window
        self.going_away = False    # past the grace window: refuse new calls
        self.started_at = 0.0
        self._conns: set = set()
        self._server: Optional[StreamServer] = None
        self._hub: Any = None   # the gevent hub serving this node, set by start()
        self._stopped = gevent.event.Event()
        self.http = NodeHttp(self)   # GET /healthz, GET /metrics, POST / on the same port

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def address(self) -> Tuple[str, int]:
        """The (host, port) actually bound."""
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.address[:2]
        return host, port

    @property
    def advertised(self) -> str:
        host, port = self.address
        if self.advertise:
            return self.advertise if ":" in self.advertise else f"{self.advertise}:{port}"
        if host in ("0.0.0.0", "::", ""):
            host = primary_address()
        return f"{host}:{port}"

    def record(self, spec) -> dict:
        """The record published for ``spec`` (see :mod:`framework.record`)."""
        return record.build(spec, self.advertised, self.started_at, __version__, self.metadata)

    def start(self) -> "Server":
        # a bounded spawn pool: at max_connections the server stops accepting until one closes
        self._server = StreamServer((self.host, self.port), self._handle,
                                    spawn=gevent.pool.Pool(self.max_connections))
        self._server.start()
        self._hub = gevent.get_hub()
        self.started_at = round(time.time(), 3)
        log.info("serving %s on %s:%s", ", ".join(s.name for s in self.specs), *self.address)
        if self.etcd is not None:
            entries = {record.key(self.prefix, spec.name, self.advertised):
                       record.encode(self.record(spec)) for spec in self.specs}
            self.registration = Registration(self.etcd, entries, self.ttl)
            self.registration.start()
        return self

    def stop(self, grace: Optional[float] = None, drain_timeout: Optional[float] = None) -> None:
        """Deregister, serve out the grace window, refuse new calls, drain, close."""
        if self._stopped.is_set():
            return
        grace = self.grace if grace is None else grace
        drain_timeout = self.drain_timeout if drain_timeout is None else drain_timeout
        self.draining = True
        if self.registration is not None:
            self.registration.stop()
        if grace > 0:
            gevent.sleep(grace)
        self.going_away = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.send(_GOAWAY_FRAME)
        deadline = time.monotonic() + drain_timeout
        for conn in list(self._conns):
            conn.idle.wait(max(0.0, deadline - time.monotonic()))
        self.pool.join(timeout=max(0.0, deadline - time.monotonic()))
        # a request already on the wire when $goaway left still gets its "not processed" answer
        gevent.sleep(min(self.linger, max(0.0, deadline - time.monotonic())))
        for conn in list(self._conns):
            conn.closed = True
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # HTTP keep-alive connections too: their calls are done (the pool drained), and a client
        # waiting on one must see the close, not a node that is gone but still holds the socket
        for sock in list(self.http.connections):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.pool.close()
        if self.client is not None:
            self.client.close()
        if self.discovery is not None:
            self.discovery.close()
        self._stopped.set()
        log.info("stopped %s", ", ".join(s.name for s in self.specs))

    def serve_forever(self) -> None:
        if self._server is None:
            self.start()
        self._stopped.wait()

    # ---- connections -----------------------------------------------------------------------------

    def _sniff(self, sock, peer) -> Optional[bytes]:
        """Read the connection's first bytes; None when it was HTTP (and has been served as such)."""
        first = b""
        while True:
            try:
                data = sock.recv(262144)
            except OSError:
                return first
            first += data
            kind = sniff(first)
            if kind is None and data:
                continue
            if kind:
                self.http.serve(sock, peer, first)
                return None
            return first

    def _accept(self, sock, peer):
        """Socket options, then the TLS handshake when the port is TLS; None when it failed."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # a peer that vanished without a FIN (power loss, blackhole) is found by TCP keepalive
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        # the first bytes (and the handshake) must come within frame_timeout: idle floods expire
        sock.settimeout(self.frame_timeout)
        if self.tls is None:
            return sock
        try:
            return self.tls.wrap_socket(sock, server_side=True)
        except (OSError, ValueError) as exc:
            log.info("TLS handshake with %s failed: %s", peer[0], exc)
            sock.close()
            return None

    def _handle(self, sock, peer) -> None:
        sock = self._accept(sock, peer)
        if sock is None:
            return
        first = self._sniff(sock, peer)
        if not first:  # served as HTTP, or closed / silent for frame_timeout before a byte came
            if first is not None:
                sock.close()
            return
        conn = _Conn(sock, peer, self.max_conn_in_flight, self.pool._jobs, self.write_part,
                     self.max_frame)
        self._conns.add(conn)
        self._read(conn, first)
        if conn.reader is not gevent.getcurrent():
            # another greenlet reads now; the StreamServer closes the socket when we return
            conn.finished.wait()

    def _read(self, conn: _Conn, first: bytes = b"") -> None:
        """The connection's reader: frames in, calls started. It runs in the connection's own
        greenlet, or in a replacement started by :meth:`_take_over` when a call it ran blocked."""
        me = conn.reader = gevent.getcurrent()
        sock, reader, peer = conn.sock, conn.frames, conn.peer
        try:
            while not conn.closed:
                if first:
                    data, first = first, b""
                else:
                    # between frames a connection may idle for ever; inside one it has
                    # frame_timeout in all to finish it (a slow sender cannot pin memory)
                    if reader.buffered:
                        sock.settimeout(max(0.001, conn.frame_began + self.frame_timeout
                                            - time.monotonic()))
                    else:
                        sock.settimeout(None)
                    try:
                        data = sock.recv(262144)
                    except OSError as exc:
                        if isinstance(exc, socket.timeout):
                            log.info("closing connection from %s: frame not finished in %ss",
                                     peer[0], self.frame_timeout)
                        break
                if not data:
                    break
                if not reader.buffered:
                    conn.frame_began = time.monotonic()
                try:
                    bodies = reader.feed(data)
                except ProtocolError as exc:
                    self._reject(conn, exc)
                    break
                received = time.monotonic()
                unpack = protocol.unpack_body if reader.marked else protocol.unpack_unmarked
                for body in bodies:
                    try:
                        obj = unpack(body)
                    except ParseError as exc:
                        self._reject(conn, exc)
                        return
                    if type(obj) is dict and obj.get("method") == protocol.PING:
                        conn.send(_PONG_FRAME)  # liveness: answered here, even when busy
                        continue
                    if self.going_away:
                        self._refuse(conn, obj)
                        continue
                    # both block when full: the per-connection cap, then the node's pool; the
                    # reader stops reading, so TCP pushes back on the sender (no queue grows)
                    conn.slots.acquire()
                    if not conn.in_flight:
                        conn.idle.clear()
                    conn.in_flight += 1
                    if conn.in_flight == 1 and len(bodies) == 1 and not self.pool._jobs:
                        self._run_inline(conn, obj, received, me)
                        if conn.reader is not me:
                            return  # the call blocked: a new reader took over (and the close)
                    else:
                        self.pool.submit(self._run, conn, obj, received)
        finally:
            if conn.reader is me:
                self._finish(conn)

    def _run_inline(self, conn: _Conn, obj: Any, received: float, me: Any) -> None:
        """A lone request runs in the reader itself: no hand-off to a worker, which cost two
        greenlet switches and a hub turn (1 caller: ~4,350 -> ~5,050 calls/s, A/B in
        docs/performance.md).
        Should the call block, the hub runs :meth:`_take_over` meanwhile and a new greenlet goes
        on reading, so pings are still answered and later requests still start."""
        conn.inline = me
        self._hub.loop.run_callback(self._take_over, conn, me)
        try:
            self.pool.run_here(self._run, conn, obj, received)
        finally:
            if conn.inline is me:
                conn.inline = None

    def _take_over(self, conn: _Conn, me: Any) -> None:
        # in the hub: if ``me`` is still inside a call it ran inline, that call blocked
        if conn.inline is me and conn.reader is me and not conn.closed:
            conn.reader = gevent.spawn(self._read, conn)

    def _finish(self, conn: _Conn) -> None:
        """The last reader of a connection is done: close it once its calls are answered."""
        self._conns.discard(conn)
        if conn.in_flight:
            # the peer may only have half-closed (SHUT_WR): its answers still go out
            conn.idle.wait(self.drain_timeout)
        self._close(conn)
        conn.finished.set()

    def _close(self, conn: _Conn) -> None:
        conn.closed = True
        try:
            conn.sock.close()
        except OSError:
            pass

    def _reject(self, conn: _Conn, exc) -> None:
        log.warning("closing connection from %s: %s", conn.peer[0], exc)
        try:
            conn.sock.sendall(protocol.pack(protocol.error_response(None, exc)))
        except OSError:
            pass

    def _refuse(self, conn: _Conn, obj: Any) -> None:
        rid = obj.get("id") if isinstance(obj, dict) else None
        if rid is not None:
            conn.send(protocol.pack(protocol.error_response(
                rid, GoingAway("node is shutting down; call not processed"))))

    def _run(self, conn: _Conn, obj: Any, received: float) -> None:
        try:
            response = self.dispatcher.handle(obj, received)
            if response is not None and not conn.closed:
                try:
                    frame = self._pack(response)
                except Exception as exc:  # the handler returned something msgpack cannot encode
                    frame = protocol.pack(protocol.error_response(response.get("id"), InternalError(
                        f"result could not be encoded: {exc}")))
                conn.send(frame)
                conn.throttle(self.max_pending_output)
        finally:
            conn.slots.release()
            conn.in_flight -= 1
            if not conn.in_flight:
                conn.idle.set()
