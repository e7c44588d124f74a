"""Serving: a node's lifecycle - start, register, serve, drain, stop.

A :class:`Server` listens with a gevent ``StreamServer``, registers its services in etcd
(:mod:`framework.registry`) and hands every accepted connection on: to the node's HTTP surface when
its first bytes are HTTP (:mod:`framework.httpapi`), else to an
:class:`~framework.accepted.AcceptedConnection`, which reads frames and runs the calls on the node's
:class:`~framework.workers.Workers`.

``stop()`` shuts down in the order that loses no call: (1) revoke the lease, so clients drop the node
within milliseconds; (2) keep serving for ``grace`` seconds, for callers that have not yet seen the
removal; (3) tell every connection the node is going away and answer any later request with
GoingAway (-32001: not processed, re-send elsewhere); (4) wait up to ``drain_timeout`` for calls in
flight; (5) close.

A Server needs a gevent-patched process (``python -m framework serve`` patches at startup).
"""
from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Any, Optional, Sequence, Tuple, Union

import gevent
import gevent.event
import gevent.pool
from gevent.server import StreamServer

from . import __version__, protocol, record
from .accepted import AcceptedConnection
from .calls import Interceptor
from .client import Client
from .discovery import DEFAULT_PREFIX, Discovery
from .dispatch import Dispatcher
from .etcd import EtcdAPI, EtcdConfig
from .httpapi import NodeHttp, sniff
from .metrics import NodeMetrics
from .registry import Registration
from .service import spec_of
from .shedding import Shedder
from .tracing import Tracing
from .workers import Workers

log = logging.getLogger(__name__)


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
    #: requests one connection may have waiting for a slot while the reader goes on reading (and
    #: answering pings); past either bound the reader stops and TCP pushes back
    max_parked = 64
    max_parked_bytes = 1024 * 1024
    #: response bytes queued for one connection before its handlers wait for the peer to read
    max_pending_output = 8 * 1024 * 1024
    #: seconds a peer may read nothing of its pending answers before its connection is cut (a
    #: client that stops reading cannot pin the node's workers or memory)
    write_timeout = 10.0
    #: answers per write once a burst is large: sent in parts, so the caller's process works on
    #: the first ones while the node computes the rest (both cores busy, not taking turns)
    write_part = 16
    #: upper bound on waiting for in-flight calls during stop
    drain_timeout = 10.0
    #: after draining, seconds to keep answering late requests with GoingAway before closing
    linger = 0.1
    #: a listening socket to accept on instead of binding host:port (a pre-fork worker's), and
    #: whether to register (a pre-fork worker does not: its supervisor holds the registration)
    listener: Optional[socket.socket] = None
    register = True
    #: connections accepted per wake-up (gevent's default 100); a pre-fork worker takes 1, so the
    #: kernel's next connection may go to another worker
    max_accept = 100

    def __init__(self, services: Sequence[type], host: str = "0.0.0.0", port: int = 0,
                 etcd: Union[None, bool, str, Sequence[str], EtcdConfig] = None, ttl: int = 10,
                 prefix: str = DEFAULT_PREFIX, advertise: Optional[str] = None,
                 max_concurrency: int = 1000, max_frame: int = protocol.MAX_FRAME,
                 token: Optional[str] = None, metadata: Optional[dict] = None,
                 etcd_client: Optional[EtcdAPI] = None, tls: Optional[ssl.SSLContext] = None,
                 client_tls: Optional[ssl.SSLContext] = None,
                 max_conn_in_flight: Optional[int] = None, max_connections: Optional[int] = None,
                 frame_timeout: Optional[float] = None, write_timeout: Optional[float] = None,
                 shedding: Union[None, bool, Shedder] = None, labels: Optional[dict] = None,
                 interceptors: Sequence[Interceptor] = (), tracing: Optional[Tracing] = None,
                 client_options: Optional[dict] = None):
        if not services:
            raise ValueError("Server needs at least one service class")
        self.specs = [spec_of(cls) for cls in services]
        self.host, self.port = host, port
        self.ttl = ttl
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.advertise = advertise
        self.max_frame = max_frame
        self.token = token
        self.labels = record.check_labels(labels)   # published for routing (framework.routing)
        self.metadata = dict(metadata or {})
        # tls: server-side context for the RPC port (see tls.server_tls_context)
        self.tls = tls
        if tls is not None:
            self.metadata.setdefault("tls", True)
        for name, value in (("max_conn_in_flight", max_conn_in_flight),
                            ("max_connections", max_connections),
                            ("frame_timeout", frame_timeout), ("write_timeout", write_timeout)):
            if value is not None:
                setattr(self, name, value)   # else the class default
        #: refuses calls that would wait too long (framework.shedding); shedding=False: never
        self.shedder = shedding if isinstance(shedding, Shedder) else Shedder(
            enabled=shedding is not False)
        self.metrics = NodeMetrics(self)
        self.etcd: Optional[EtcdAPI] = None
        self._owned_etcd: Any = None   # one this Server made: closed when it stops
        if etcd is not False:
            self.etcd = etcd_client or EtcdConfig.coerce(etcd).client()
            self._owned_etcd = None if etcd_client else self.etcd
        self.discovery: Optional[Discovery] = (
            Discovery(self.etcd, self.prefix) if self.etcd is not None else None)
        self.instances = [spec.cls() for spec in self.specs]
        self.client = self._client(client_tls, client_options)
        self.dispatcher = Dispatcher(self.instances, token=token, observe=self.metrics.observe,
                                     started=self.shedder.note if self.shedder.enabled else None,
                                     interceptors=interceptors, tracing=tracing)
        self.pack = protocol.frame_packer()   # the node's greenlets share one OS thread
        self.pool = Workers(max_concurrency)
        self.registration: Optional[Registration] = None
        self.draining = False      # deregistered: still serving during the grace window
        self.going_away = False    # past the grace window: refuse new calls
        self.started_at = 0.0
        self.connections: set = set()   # AcceptedConnections open now
        self._server: Optional[StreamServer] = None
        self.hub: Any = None   # the gevent hub serving this node, set by start()
        self._stopped = gevent.event.Event()
        self.http = NodeHttp(self)   # GET /healthz, GET /metrics, POST / on the same port

    def _client(self, tls: Optional[ssl.SSLContext], options: Optional[dict]) -> Optional[Client]:
        """``self.client`` of every service: the calls handlers make, counted in this node's
        /metrics. ``tls``: how it verifies the nodes it calls; ``options``: other Client
        arguments (lane, prefer, interceptors...)."""
        client = (Client(discovery=self.discovery, token=self.token, tls=tls,
                         metrics=self.metrics.registry, **(options or {}))
                  if self.discovery else None)
        for instance in self.instances:
            instance.client = client
        return client

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
        return record.build(spec, self.advertised, self.started_at, __version__, self.metadata,
                            self.labels)

    def entries(self) -> dict:
        """What this node registers: key -> record, one per service."""
        return {record.key(self.prefix, spec.name, self.advertised):
                record.encode(self.record(spec)) for spec in self.specs}

    def start(self) -> "Server":
        # a bounded spawn pool: at max_connections the server stops accepting until one closes
        self._server = StreamServer(self.listener or (self.host, self.port), self._handle,
                                    spawn=gevent.pool.Pool(self.max_connections))
        self._server.max_accept = self.max_accept
        self._server.start()
        self.hub = gevent.get_hub()
        self.shedder.start()
        self.started_at = round(time.time(), 3)
        log.info("serving %s on %s:%s", ", ".join(s.name for s in self.specs), *self.address)
        if self.etcd is not None and self.register:
            self.registration = Registration(self.etcd, self.entries(), self.ttl)
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
        for conn in list(self.connections):
            conn.go_away()
        deadline = time.monotonic() + drain_timeout
        for conn in list(self.connections):
            conn.idle.wait(max(0.0, deadline - time.monotonic()))
        self.pool.join(timeout=max(0.0, deadline - time.monotonic()))
        # a request already on the wire when $goaway left still gets its "not processed" answer
        gevent.sleep(min(self.linger, max(0.0, deadline - time.monotonic())))
        for conn in list(self.connections):
            conn.shutdown()
        # HTTP keep-alive connections too: their calls are done (the pool drained), and a client
        # waiting on one must see the close, not a node that is gone but still holds the socket
        for sock in list(self.http.connections):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.pool.close()
        self.shedder.stop()
        if self.client is not None:
            self.client.close()
        if self.discovery is not None:
            self.discovery.close()
        if self._owned_etcd is not None:
            self._owned_etcd.close()   # idle keep-alive connections (the lease is revoked)
        self._stopped.set()
        log.info("stopped %s", ", ".join(s.name for s in self.specs))

    def serve_forever(self) -> None:
        if self._server is None:
            self.start()
        self._stopped.wait()

    # ---- accepted connections --------------------------------------------------------------------

    def _handle(self, sock, peer) -> None:
        sock = self._accept(sock, peer)
        if sock is None:
            return
        first = self._sniff(sock, peer)
        if not first:  # served as HTTP, or closed / silent for frame_timeout before a byte came
            if first is not None:
                sock.close()
            return
        conn = AcceptedConnection(self, sock, peer)
        self.connections.add(conn)
        conn.serve(first)

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
