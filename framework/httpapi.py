"""A node's HTTP surface, on its RPC port: health, metrics and JSON-RPC for ``curl``.

The server reads the first bytes of every connection. When they are an HTTP method (``GET ``,
``POST``, ...) the connection is handed to gevent's ``pywsgi`` handler with those bytes replayed;
anything else is the msgpack protocol. No valid msgpack frame can start with an HTTP method: read
as the big-endian frame length, ``b"GET "`` is about 1.2 GB, far over the largest frame a node accepts.

Routes (``HEAD`` works wherever ``GET`` does):

* ``GET /healthz`` - 200 ``{"status": "serving", ...}`` while serving; 503 ``{"status": "draining"}``
  once shutdown began, so a load balancer stops sending before the node goes away;
* ``GET /metrics`` - Prometheus text (:mod:`framework.metrics`);
* ``POST /`` - a JSON-RPC 2.0 body for this node's services (:mod:`framework.jsonrpc_http`). With a
  shared token, send it as ``Authorization: Bearer <token>``.
"""
from __future__ import annotations

import io
import json
import logging
import time
from typing import Any, List, Optional

from gevent.pywsgi import LoggingLogAdapter, WSGIServer

from . import __version__, protocol
from .errors import GoingAway
from .jsonrpc_http import JsonRpcHttp, Limits, bearer_token, respond, serve_post

log = logging.getLogger(__name__)

HTTP_METHODS = (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"PATC", b"TRAC", b"CONN")


def sniff(first: bytes) -> Optional[bool]:
    """True: HTTP; False: not HTTP; None: too few bytes to tell yet."""
    head = first[:4]
    if len(head) == 4:
        return head in HTTP_METHODS
    return None if any(m.startswith(head) for m in HTTP_METHODS) else False


class _PrefixedRaw(io.RawIOBase):
    """Raw reads that return the already-received ``prefix`` first, then read the socket."""

    def __init__(self, sock, prefix: bytes):
        super().__init__()
        self._sock = sock
        self._prefix = memoryview(prefix)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        try:
            return self._sock.recv_into(b)
        except ConnectionError:
            return 0


class _Replay:
    """The accepted socket, whose ``makefile`` replays the sniffed bytes (what pywsgi reads through)."""

    def __init__(self, sock, prefix: bytes):
        self._sock_obj = sock
        self._first = prefix

    def makefile(self, mode: str = "rb", buffering: int = -1):
        return io.BufferedReader(_PrefixedRaw(self._sock_obj, self._first))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock_obj, name)


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class NodeHttp:
    """The WSGI app of one :class:`~framework.server.Server`, and the hand-off of sniffed sockets."""

    def __init__(self, server: Any, limits: Limits = Limits()):
        self.server = server
        # HTTP calls run in the node's own pool: they count as in flight and share its limit
        self.rpc = JsonRpcHttp(self._invoke, limits, spawn=self._spawn)
        self.connections: set = set()   # sockets being served as HTTP
        self._wsgi = WSGIServer(("127.0.0.1", 0), self.app, log=None,
                                error_log=LoggingLogAdapter(log, logging.ERROR))

    def _spawn(self, fn, *args):
        return self.server.pool.spawn(fn, *args)

    def serve(self, sock, peer, first: bytes) -> None:
        """Serve an accepted connection whose first bytes (already read) are ``first``."""
        self.connections.add(sock)   # Server.stop closes the ones still open (keep-alive)
        try:
            self._wsgi.handle(_Replay(sock, first), peer)
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

    def app(self, environ: dict, start_response) -> List[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        try:
            if path == "/healthz" and method in ("GET", "HEAD"):
                status = 503 if self.server.draining else 200
                return respond(start_response, status, json_body(self.health()),
                               [("Cache-Control", "no-store")])
            if path == "/metrics" and method in ("GET", "HEAD"):
                body = self.server.metrics.render()
                start_response("200 OK", [("Content-Type", self.server.metrics.content_type),
                                          ("Content-Length", str(len(body)))])
                return [body]
            if path == "/" and method == "POST":
                token = bearer_token(environ)
                _, body = serve_post(self.rpc, environ, start_response,
                                     {"token": token} if token else None)
                return body
            if path in ("/", "/healthz", "/metrics"):
                allow = "POST" if path == "/" else "GET, HEAD"
                return respond(start_response, 405, json_body({"error": f"use {allow}"}),
                               [("Allow", allow)])
            return respond(start_response, 404, json_body({"error": f"no route {path}"}))
        except Exception:  # answer in JSON and keep the traceback in the log, not the response
            log.exception("HTTP %s %s failed", method, path)
            return respond(start_response, 500, json_body({"error": "internal error"}),
                           [("Connection", "close")])
