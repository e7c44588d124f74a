"""The HTTP surface shared by nodes and the gateway: one WSGI app for health, metrics and JSON-RPC.

Routes (``HEAD`` works wherever ``GET`` does):

* ``GET /healthz`` - 200 and the owner's health dict while serving; 503 once it is draining, so a
  load balancer stops sending before it goes away. Never cached;
* ``GET /metrics`` - Prometheus text (:mod:`framework.metrics`);
* ``POST /`` - a JSON-RPC 2.0 body (:mod:`framework.jsonrpc_http`), unless the owner's ``guard``
  refuses it first (the gateway asks browsers for its token: :func:`framework.console.token_guard`);
* the owner's ``pages``: more read-only routes (the gateway's ``/openrpc.json`` and ``/ui``).

Another method on one of these paths is 405 with ``Allow``; another path is 404; an exception is a
500 whose JSON body says only ``internal error``, the traceback going to the log.

A node (:mod:`framework.httpapi`) and the gateway (:mod:`framework.gateway`) each build one
:class:`HttpSurface`; everything that differs between the two is an argument of its constructor.
Both serve it with :mod:`framework.httpserver`.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import RpcError
from .jsonrpc_http import JsonRpcHttp, respond, serve_post, status_line

#: the methods each route answers, as its 405 names them in ``Allow``
_ALLOW = {"/": "POST", "/healthz": "GET, HEAD", "/metrics": "GET, HEAD"}
_READ = ("GET", "HEAD")


def json_body(obj: Any) -> bytes:
    """A compact JSON body for the surface's own (non-JSON-RPC) answers."""
    return json.dumps(obj, separators=(",", ":")).encode()


#: a read-only route: ``page(environ) -> (status, content_type, body)``
Page = Callable[[dict], Tuple[int, str, bytes]]
#: sent with every page: it may load scripts, styles and data from its own origin only, no other
#: site may frame it (a framed call form could be clicked blind), and types are never sniffed
PAGE_HEADERS = (("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'"),
                ("X-Content-Type-Options", "nosniff"))


def _no_meta(environ: dict) -> Optional[dict]:
    return None


#: the HTTP headers of the W3C trace context, passed on as call metadata by nodes and the gateway
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def header_metadata(names: Sequence[str]) -> Callable[[dict], Dict[str, str]]:
    """``metadata(environ)``: the request's headers named in ``names`` (lower-cased keys)."""
    keys = [(name.lower(), "HTTP_" + name.upper().replace("-", "_")) for name in names]

    def metadata(environ: dict) -> Dict[str, str]:
        return {key: environ[env] for key, env in keys if env in environ}
    return metadata


class HttpSurface:
    """The WSGI app serving ``/healthz``, ``/metrics`` and ``POST /`` for one node or gateway.

    * ``rpc`` answers ``POST /``; ``metrics`` has ``render()`` and ``content_type``;
    * ``health()`` is the ``/healthz`` body and ``draining()`` turns its status to 503;
    * ``meta(environ)`` is merged into every request's ``meta`` (None: nothing to add);
    * ``on_status(status)``, when given, sees the status of every answer, 500s included;
    * ``log`` records failures: the owner's logger, so its name in the log stays the owner's;
    * ``pages`` maps more ``GET``/``HEAD`` paths to a :data:`Page` (sent with :data:`PAGE_HEADERS`);
    * ``guard(environ)``, when given, may refuse a ``POST /`` as a whole before its body is read,
      by returning an :class:`~framework.errors.RpcError` (the gateway's token for browser calls).
    """

    def __init__(self, rpc: JsonRpcHttp, metrics: Any, *, health: Callable[[], dict],
                 draining: Callable[[], bool],
                 meta: Callable[[dict], Optional[dict]] = _no_meta,
                 on_status: Optional[Callable[[int], None]] = None,
                 log: logging.Logger = logging.getLogger(__name__),
                 pages: Optional[Dict[str, Page]] = None,
                 guard: Optional[Callable[[dict], Optional[RpcError]]] = None):
        self.rpc = rpc
        self.guard = guard
        self.pages = dict(pages or {})
        self.metrics = metrics
        self.health = health
        self.draining = draining
        self.meta = meta
        self.on_status = on_status
        self.log = log

    def __call__(self, environ: dict, start_response) -> List[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        status = 500
        try:
            status, body = self._route(method, path, environ, start_response)
            return body
        except Exception:
            self.log.exception("HTTP %s %s failed", method, path)
            status = 500
            return respond(start_response, 500, json_body({"error": "internal error"}),
                           [("Connection", "close")])
        finally:
            if self.on_status is not None:
                self.on_status(status)

    def _route(self, method: str, path: str, environ: dict,
               start_response) -> Tuple[int, List[bytes]]:
        if path == "/" and method == "POST":
            refused = self.guard(environ) if self.guard is not None else None
            if refused is not None:   # the body is not read: the connection cannot be reused
                status, payload = self.rpc.refuse(refused)
                return status, respond(start_response, status, payload, [("Connection", "close")])
            return serve_post(self.rpc, environ, start_response, self.meta(environ))
        if path == "/healthz" and method in _READ:
            status = 503 if self.draining() else 200
            return status, respond(start_response, status, json_body(self.health()),
                                   [("Cache-Control", "no-store")])
        if path == "/metrics" and method in _READ:
            body = self.metrics.render()
            start_response("200 OK", [("Content-Type", self.metrics.content_type),
                                      ("Content-Length", str(len(body)))])
            return 200, [body]
        page = self.pages.get(path)
        if page is not None and method in _READ:
            status, content_type, body = page(environ)
            start_response(status_line(status),
                           [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *PAGE_HEADERS])
            return status, [body]
        allow = _ALLOW.get(path) or ("GET, HEAD" if page is not None else None)
        if allow is not None:
            return 405, respond(start_response, 405, json_body({"error": f"use {allow}"}),
                                [("Allow", allow)])
        return 404, respond(start_response, 404, json_body({"error": f"no route {path}"}))
