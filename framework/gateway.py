"""Gateway: the HTTP front door. ``POST /`` JSON-RPC 2.0 -> :class:`framework.Client` -> a live node.

Each call goes through the framework's own client, so the watched cache, load balancing, retries
(idempotency-aware), ejection of failing nodes and deadlines all apply. Parsing, batches,
notifications and limits are :mod:`framework.jsonrpc_http`'s; this module decides where calls go
and what a failure looks like over HTTP:

* ``"Service.method"`` of a service that has no key in the registry -> -32601 (404). The gateway
  only starts watching services that exist, so made-up names cannot make it open watches (the list
  of names is re-read from etcd at most every ``names_refresh`` seconds, on a miss). Services named
  in ``services=`` (``--service``) count as existing from the start, so during a full outage of one
  of them - even one that began before the gateway started - its callers get 503, not 404;
* a known service with no live node, or nodes that all failed -> -32010 ServiceUnavailable (503);
* the deadline passed -> -32002 (504); a node lost mid-call -> -32603 (502);
* a handler's exception -> -32000 with ``data = {"type", "message"}`` (200: the call was answered);
* ``rpc.discover`` -> the OpenRPC document of every live service, each part asked of one of its
  nodes and kept until its nodes change (:class:`framework.schema.Catalog`); the same document is
  ``GET /openrpc.json``.

The per-call deadline is ``timeout`` seconds, or the request's ``meta.timeout_ms`` capped at
``max_timeout``. The routes are :mod:`framework.web`'s: ``GET /healthz`` is 200 while serving and 503
once :meth:`Gateway.stop` began, ``GET /metrics`` is Prometheus text (with every HTTP answer counted
by status), and ``GET /ui`` is the operator console (:mod:`framework.console`). Calls carry the
gateway's own token; an ``Authorization`` header is only read from browsers (requests with an
``Origin``), which must send that token once the gateway has one (:func:`console.token_guard`).

Calls carry as metadata the W3C trace headers (``traceparent``, ``tracestate``, ``baggage``: the
gateway continues the HTTP caller's trace, and ``baggage: lane=canary`` puts the call in a swim
lane) and the headers named in ``forward_headers`` (``--forward-header``), nothing else.

The gateway needs a gevent-patched process (``python -m framework gateway`` patches at startup).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Optional, Sequence, Union

import gevent
import gevent.event
import gevent.pool
from gevent.server import StreamServer

from . import __version__, console, protocol
from .client import Client
from .discovery import DEFAULT_PREFIX
from .errors import EtcdError, InternalError, MethodNotFound, RpcError, ServiceUnavailable
from .jsonrpc_http import JsonRpcHttp, Limits
from .schema import DISCOVER, Catalog
from .metrics import UNKNOWN, GatewayMetrics, outcome_of
from .httpserver import HttpBounds, serve as serve_http
from .web import TRACE_HEADERS, HttpSurface, header_metadata

log = logging.getLogger(__name__)



class Gateway:
    """Serves JSON-RPC over HTTP for every service in the registry. ``etcd`` as for :class:`Client`."""

    #: seconds between re-reads of the registry's service names, on a miss
    names_refresh = 0.5
    #: seconds ``stop`` keeps serving with /healthz at 503, so load balancers stop sending first
    grace = 0.5
    #: connections accepted per wake-up (a pre-fork worker takes 1: see framework.prefork)
    max_accept = 100

    def __init__(self, etcd: Union[None, str, Sequence[str]] = None, *, prefix: str = DEFAULT_PREFIX,
                 timeout: float = 5.0, max_timeout: float = 60.0, limits: Limits = Limits(),
                 token: Optional[str] = None, client: Optional[Client] = None,
                 services: Sequence[str] = (), forward_headers: Sequence[str] = (),
                 request_timeout: float = 30.0, idle_timeout: float = 75.0):
        self.metrics = GatewayMetrics(self)
        #: the client's calls (retries, hedges, ejections) count in the gateway's /metrics too
        self.client = client or Client(etcd=etcd, timeout=timeout, prefix=prefix, token=token,
                                       metrics=self.metrics.registry)
        self._owns_client = client is None
        if client is not None and client.metrics is None:
            self.metrics.count_client(client)
        self.timeout = timeout
        self.max_timeout = max_timeout
        self.limits = limits
        # -32603 here means the node was lost mid-call: the upstream failed, not the gateway
        self.rpc = JsonRpcHttp(self._invoke, limits, statuses={InternalError.code: 502})
        self.draining = False
        #: metadata of each call: the W3C trace headers and the ``forward_headers`` named, and
        #: nothing else (a caller's body cannot set metadata the gateway was not told to pass on)
        self._metadata = header_metadata(TRACE_HEADERS + tuple(forward_headers))
        self.wsgi = HttpSurface(self.rpc, self.metrics, health=self.health,
                                draining=lambda: self.draining, on_status=self.metrics.answered,
                                meta=self._meta,
                                log=log, guard=console.token_guard(self.client.token))
        # services seen in the registry, or declared: the only ones called
        self._known: set = set(services)
        self._names_at = 0.0
        self._names_lock = threading.Lock()
        #: what one HTTP connection may hold or wait for (framework.httpserver), and an access
        #: line per request when the ``framework.gateway.access`` logger records DEBUG
        self.http_bounds = HttpBounds(max_body=limits.max_body, request_timeout=request_timeout,
                                      idle_timeout=idle_timeout,
                                      access_log=logging.getLogger(__name__ + ".access"))
        self._server: Optional[StreamServer] = None
        self._stopped = gevent.event.Event()
        self.wsgi.pages.update(console.pages(self))   # GET /ui: the operator console
        #: the OpenRPC document of every live service: rpc.discover and GET /openrpc.json
        self.catalog = Catalog(self.client, timeout)
        self.wsgi.pages["/openrpc.json"] = self.catalog.http

    def _meta(self, environ: dict) -> Optional[dict]:
        metadata = self._metadata(environ)
        return {"metadata": metadata} if metadata else None

    # ---- routing a call --------------------------------------------------------------------------

    def _exists(self, service: str) -> bool:
        if service in self._known:
            return True
        with self._names_lock:
            if service in self._known:
                return True
            if time.monotonic() - self._names_at < self.names_refresh:
                return False
            names = self.client.discovery.services()   # EtcdError propagates: unavailable
            self._names_at = time.monotonic()
            self._known.update(names)
        return service in self._known

    def _deadline(self, req: protocol.Request) -> float:
        ms = req.meta.get("timeout_ms")
        if isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms > 0:
            return min(ms / 1000.0, self.max_timeout)
        return self.timeout

    def _invoke(self, req: protocol.Request) -> dict:
        service, _, name = req.method.rpartition(".")
        labels = (service, name) if service in self._known else (UNKNOWN, UNKNOWN)
        started = time.monotonic()
        error: Optional[RpcError] = None
        self.metrics.started()
        try:
            if not service or not name:
                raise MethodNotFound(f"Method not found: {req.method} (use 'Service.method')")
            try:
                exists = self._exists(service)
            except EtcdError as exc:
                raise ServiceUnavailable(f"registry unreachable: {exc}") from None
            if not exists:
                if req.method == DISCOVER:   # a method of no service: JSON-RPC keeps "rpc."
                    labels = ("rpc", "discover")
                    return protocol.response(req.id, self.catalog.document())
                raise MethodNotFound(f"Method not found: {req.method} "
                                     f"(no service {service!r} is registered)")
            labels = (service, name)
            result = self.client.call(req.method, req.params, timeout=self._deadline(req),
                                      metadata=req.meta.get("metadata") or None)
            return protocol.response(req.id, result)
        except RpcError as exc:
            error = exc
            return protocol.error_response(req.id, exc, typed=True)
        finally:
            self.metrics.finished()
            outcome = outcome_of(error)
            if outcome in ("not_found", "invalid_request"):
                labels = (UNKNOWN, UNKNOWN)   # never a label value taken from a bad request
            self.metrics.observe(labels[0], labels[1], outcome, time.monotonic() - started)

    # ---- HTTP ------------------------------------------------------------------------------------

    def health(self) -> dict:
        return {"status": "draining" if self.draining else "serving", "version": __version__,
                "services": self.client.discovery.stats()}

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self, host: str = "0.0.0.0", port: int = 8080, max_connections: int = 10000,
              listener: Optional[socket.socket] = None) -> "Gateway":
        """Listen on ``host:port`` (port 0: any free port; see :attr:`address`), or accept on
        ``listener`` (a pre-fork worker's inherited socket)."""
        self._server = StreamServer(listener or (host, port), self._serve_http,
                                    spawn=gevent.pool.Pool(max_connections))
        self._server.max_accept = self.max_accept
        self._server.start()
        log.info("gateway listening on %s:%s", *self.address)
        return self

    def _serve_http(self, sock, peer) -> None:
        serve_http(sock, peer, self.wsgi, self.http_bounds)

    @property
    def address(self):
        if self._server is None:
            raise RuntimeError("gateway not started")
        return self._server.address[:2]

    def stop(self, grace: Optional[float] = None, drain_timeout: float = 10.0) -> None:
        """/healthz says 503 for ``grace`` seconds, then stop accepting and finish open requests."""
        if self.draining:
            return
        self.draining = True
        grace = self.grace if grace is None else grace
        if grace > 0:
            gevent.sleep(grace)
        if self._server is not None:
            self._server.stop(timeout=drain_timeout)
        if self._owns_client:
            self.client.close()
        self._stopped.set()
        log.info("gateway stopped")

    def serve_forever(self) -> None:
        if self._server is None:
            raise RuntimeError("call start() first")
        self._stopped.wait()


def serve(etcd: Union[None, str, Sequence[str]] = None, host: str = "0.0.0.0", port: int = 8080,
          **kwargs) -> Gateway:
    """Build and start a :class:`Gateway` (``kwargs`` as for the constructor). Needs gevent patching."""
    return Gateway(etcd, **kwargs).start(host, port)
