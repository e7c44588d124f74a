"""A node's HTTP, on its RPC port: telling HTTP from msgpack, and the node's side of the routes.

The server reads the first bytes of every connection. When they are an HTTP method (``GET ``,
``POST``, ...) the connection is served by :mod:`framework.httpserver`, those bytes first;
anything else is the msgpack protocol. No valid msgpack frame can start with an HTTP method: read
as the big-endian frame length, ``b"GET "`` is about 1.2 GB, far over the largest frame a node accepts.

The routes are :mod:`framework.web`'s (``GET /healthz``, ``GET /metrics``, ``POST /``); what is the
node's own: its health dict, ``POST /`` calls running its dispatcher in its own pool, and a shared
token sent as ``Authorization: Bearer <token>`` becoming the token of every call in the body.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

from . import __version__, protocol
from .errors import GoingAway
from .jsonrpc_http import JsonRpcHttp, Limits
from .httpserver import HttpBounds, serve as serve_http
from .web import TRACE_HEADERS, HttpSurface, header_metadata

log = logging.getLogger(__name__)

HTTP_METHODS = (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"PATC", b"TRAC", b"CONN")


def sniff(first: bytes) -> Optional[bool]:
    """True: HTTP; False: not HTTP; None: too few bytes to tell yet."""
    head = first[:4]
    if len(head) == 4:
        return head in HTTP_METHODS
    return None if any(m.startswith(head) for m in HTTP_METHODS) else False


_trace_metadata = header_metadata(TRACE_HEADERS)


def bearer_meta(environ: dict) -> Optional[dict]:
    """``Authorization: Bearer <token>`` and the W3C trace headers as the ``meta`` of each call;
    None without either."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    meta: dict = {"token": token} if token else {}
    metadata = _trace_metadata(environ)
    if metadata:
        meta["metadata"] = metadata
    return meta or None


class NodeHttp:
    """The HTTP side of one :class:`~framework.server.Server`: sniffed sockets are served with the
    shared :class:`~framework.web.HttpSurface` (``app``)."""

    def __init__(self, server: Any, limits: Limits = Limits()):
        self.server = server
        # HTTP calls run in the node's own pool: they count as in flight and share its limit
        self.rpc = JsonRpcHttp(self._invoke, limits, spawn=self._spawn)
        self.connections: set = set()   # sockets being served as HTTP
        self.app = HttpSurface(self.rpc, server.metrics, health=self.health,
                               draining=lambda: self.server.draining, meta=bearer_meta, log=log)
        self.limits = limits

    def _spawn(self, fn, *args):
        return self.server.pool.spawn(fn, *args)

    def serve(self, sock, peer, first: bytes) -> None:
        """Serve an accepted connection whose first bytes (already read) are ``first``."""
        self.connections.add(sock)   # Server.stop closes the ones still open (keep-alive)
        try:
            # a request begun must come whole as fast as a msgpack frame must
            serve_http(sock, peer, self.app, HttpBounds(
                max_body=self.limits.max_body, request_timeout=self.server.frame_timeout), first)
        finally:
            self.connections.discard(sock)

    def _invoke(self, req: protocol.Request) -> dict:
        if self.server.going_away:
            return protocol.error_response(req.id, GoingAway(
                "node is shutting down; call not processed"))
        return self.server.dispatcher.call(req, time.monotonic())

    def health(self) -> dict:
        server = self.server
        reg = server.registration
        return {"status": "draining" if server.draining else "serving",
                "services": [spec.name for spec in server.specs],
                "address": server.advertised if server._server is not None else None,
                "registered": bool(reg is not None and reg.registered),
                "version": __version__,
                "uptime_s": round(time.time() - server.started_at, 3) if server.started_at else 0}
