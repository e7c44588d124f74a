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
Both serve it with :class:`Handler`, pywsgi's request handler with less work per request.
"""
from __future__ import annotations

import http.client
import io
import json
import logging
import re
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from gevent.pywsgi import WSGIHandler, format_date_time, headers_factory

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


#: as in :mod:`http.client`: the longest header line and the most header lines of one request
_MAX_LINE, _MAX_HEADERS = 65536, 100
#: a header block of plain ``Name: value`` CRLF lines only (a name as :mod:`email` reads one:
#: printable ASCII but space and colon), and one such line as email splits it
_PLAIN_BLOCK = re.compile(r"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r\n)*")
_PLAIN_LINE = re.compile(r"([\x21-\x39\x3b-\x7e]+):[ \t]*([^\r\n]*)\r\n")


class _Headers:
    """A request's headers: the part of ``email.message.Message`` that pywsgi's handler uses."""

    __slots__ = ("_pairs", "_first", "status")

    def __init__(self, pairs: List[Tuple[str, str]], status: str = ""):
        self._pairs = pairs
        self._first: Dict[str, str] = {}   # lower-cased name -> its first value, as email's get
        for name, value in pairs:
            self._first.setdefault(name.lower(), value)
        self.status = status

    def get(self, name: str, default: Any = None) -> Any:
        return self._first.get(name.lower(), default)

    getheader = get

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        self._pairs = [pair for pair in self._pairs if pair[0].lower() != key]
        self._first.pop(key, None)

    @property
    def headers(self) -> List[str]:
        return [f"{name}: {value}\r\n" for name, value in self._pairs]

    @property
    def typeheader(self) -> Optional[str]:
        return self._first.get("content-type")


def _plain_headers(lines: List[bytes]) -> Optional[List[Tuple[str, str]]]:
    """``(name, value)`` of header lines that are all plain ``Name: value`` ending in CRLF, read
    as :mod:`email` reads them; None when one is anything else (a folded line, a bare CR, ...)."""
    block = b"".join(lines).decode("latin-1")
    if _PLAIN_BLOCK.fullmatch(block) is None:
        return None
    return _PLAIN_LINE.findall(block)


class Handler(WSGIHandler):
    """pywsgi's request handler for nodes and the gateway, giving the same answers for less work
    (pywsgi costs more per request than the JSON-RPC call it carries):

    * Nagle is off, so a small answer is never held back waiting for the client's delayed ACK;
    * request headers that are all plain ``Name: value`` lines are split here instead of by
      :mod:`email`'s parser (nearly half of pywsgi's time); any other header block goes to it;
    * the status line, headers and body go out in one ``send`` (one syscall, one segment);
    * the ``Date`` header is formatted once a second, and the access line only when
      :attr:`access_log` records DEBUG.
    """

    #: where each request's access line goes, at DEBUG (None: nowhere)
    access_log: Optional[logging.Logger] = None
    _date_second = -1
    _date = b""

    def handle(self):
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        super().handle()

    def MessageClass(self, fp, *args):
        lines: List[bytes] = []   # read exactly as http.client.parse_headers reads them
        while True:
            line = fp.readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                return _Headers([], status="Line too long")
            lines.append(line)
            if len(lines) > _MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")
            if line in (b"\r\n", b"\n", b""):
                break
        pairs = _plain_headers(lines[:-1])
        if pairs is None:
            return headers_factory(io.BytesIO(b"".join(lines)))
        return _Headers(pairs)

    def _headers(self):
        # the environ's HTTP_* items straight from the pairs, as pywsgi derives them from lines
        if type(self.headers) is not _Headers:
            yield from super()._headers()
            return
        for name, value in self.headers._pairs:
            key = name.replace("-", "_").upper()
            if "_" not in name and key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield "HTTP_" + key, value.strip()

    def finalize_headers(self):
        if self.provided_date is None:
            now = int(time.time())
            if now != self._date_second:
                self._date_second, self._date = now, format_date_time(now)
            self.response_headers.append((b"Date", self._date))
            self.provided_date = self._date
        super().finalize_headers()

    def _write_with_headers(self, data):
        self.headers_sent = True
        self.finalize_headers()
        out = bytearray(b"HTTP/1.1 %s\r\n" % self.status)
        for header, value in self.response_headers:
            out += b"%s: %s\r\n" % (header, value)
        out += b"\r\n"
        if self.response_use_chunked or not data:
            self._sendall(out)
            self._write(data)
        else:
            out += data
            self._sendall(out)

    def _sendall(self, data):
        # one send() takes a small answer whole; gevent's sendall first asks the kernel for the
        # socket's buffer size, a syscall per answer. The rest, or an error, goes pywsgi's way.
        try:
            sent = self.socket.send(data)
        except OSError:
            sent = 0
        self.response_length += sent
        if sent < len(data):
            super()._sendall(memoryview(data)[sent:])

    def log_request(self):
        if self.access_log is not None and self.access_log.isEnabledFor(logging.DEBUG):
            self.access_log.debug(self.format_request())


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
