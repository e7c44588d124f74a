"""HTTP/1.1 connections: bytes in, requests parsed, a WSGI app called, answers out.

The gateway and every node's HTTP port serve their WSGI app (:class:`framework.web.HttpSurface`)
with :func:`serve`, one call per accepted connection. Requests are parsed by ``httptools`` (llhttp,
the C parser of Node.js), answered in order (pipelined ones too) and kept alive as HTTP/1.1 says.
gevent's ``pywsgi`` spent more on a request than the gateway spent forwarding it, and most of that
went to reading the head line by line in Python (docs/performance.md, round 14).

Every bound ends in a clear answer, and then the connection closes:

* a request head over ``max_head`` bytes or :data:`MAX_HEADERS` lines -> 431;
* a body over ``max_body`` -> the app is called at once with what came (it answers 413: see
  :func:`framework.jsonrpc_http.read_body`), and the rest is never read;
* a request that is not HTTP/1.x -> 400;
* a request begun must arrive whole within ``request_timeout``; a keep-alive connection idle for
  ``idle_timeout`` is closed, as is one whose peer takes no byte of an answer for ``write_timeout``;
* ``Expect: 100-continue`` gets its ``100 Continue`` once the head is accepted;
* a connection this side closes first stops sending, then drops what the peer still sends for up
  to ``linger`` seconds: closed with input unread, it would be reset, and the peer could lose the
  answer (a 413, say) before reading it.

The environ has what PEP 3333 asks, as pywsgi fills it: repeated headers joined with ``,``, names
with ``_`` dropped (they could pass for ``-`` ones), ``PATH_INFO`` percent-decoded as latin-1.
"""
from __future__ import annotations

import collections
import io
import logging
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

import httptools

from .writing import send_within, sender

log = logging.getLogger(__name__)

#: header lines one request may carry, as http.client allows
MAX_HEADERS = 100

_REFUSALS = {400: b"400 Bad Request", 408: b"408 Request Timeout",
             431: b"431 Request Header Fields Too Large", 500: b"500 Internal Server Error"}
_NO_BODY = (204, 304)


@dataclass(frozen=True)
class HttpBounds:
    """What one HTTP connection may hold or wait for (see the module docstring)."""

    max_body: int = 1024 * 1024
    max_head: int = 65536
    request_timeout: float = 30.0
    idle_timeout: float = 75.0
    write_timeout: float = 10.0
    #: seconds a connection this side closes may still take (and drop) what its peer sends
    linger: float = 2.0
    #: where an access line per request goes, at DEBUG (None: nowhere)
    access_log: Optional[logging.Logger] = None


class _Refused(Exception):
    """Raised from a parser callback: answer with this status and close."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


_date_cache = [-1, b""]


def _date_line() -> bytes:
    now = int(time.time())
    if now != _date_cache[0]:
        from email.utils import formatdate
        _date_cache[:] = [now, b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()]
    return _date_cache[1]


class _Request:
    __slots__ = ("method", "version", "url", "headers", "body", "size", "keep_alive", "whole",
                 "expects_continue")

    def __init__(self):
        self.url = b""
        self.headers: List[Tuple[bytes, bytes]] = []
        self.body: List[bytes] = []
        self.size = 0
        self.keep_alive = False
        self.whole = False          # its body was read to the end (else the connection closes)
        self.expects_continue = False


class _Connection:
    """One accepted connection: the parser's callbacks fill :class:`_Request` objects, and the
    loop in :meth:`serve` answers each complete one in turn."""

    __slots__ = ("sock", "app", "bounds", "base", "parser", "request", "ready", "in_head",
                 "head_bytes", "began", "send_nowait", "continue_sent")

    def __init__(self, sock: Any, peer: Any, app: Callable, bounds: HttpBounds):
        self.sock = sock
        self.app = app
        self.bounds = bounds
        host, port = _name_of(sock)
        self.base = {"GATEWAY_INTERFACE": "CGI/1.1", "SCRIPT_NAME": "", "SERVER_NAME": host,
                     "SERVER_PORT": port, "REMOTE_ADDR": str(peer[0]) if peer else "",
                     "REMOTE_PORT": str(peer[1]) if peer and len(peer) > 1 else "",
                     "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
                     "wsgi.multithread": False, "wsgi.multiprocess": False,
                     "wsgi.run_once": False}
        self.parser = httptools.HttpRequestParser(self)
        self.request: Optional[_Request] = None     # the one being received
        self.ready: Deque[_Request] = collections.deque()
        self.in_head = False      # a request's head has begun and is not finished
        self.head_bytes = 0       # bytes received while a head was unfinished
        self.began = 0.0          # when the request being received began
        self.send_nowait = sender(sock)
        self.continue_sent = False

    # ---- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.request = _Request()
        self.began = time.monotonic()
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        req = self.request
        req.url += url   # may come in pieces
        req.size += len(url)
        if req.size > self.bounds.max_head:
            raise _Refused(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.request
        req.size += len(name) + len(value)
        if len(req.headers) >= MAX_HEADERS or req.size > self.bounds.max_head:
            raise _Refused(431)
        req.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req, parser = self.request, self.parser
        req.method = parser.get_method()
        req.version = parser.get_http_version()
        req.size = 0   # from here on: of the body
        self.in_head = False
        self.head_bytes = 0
        for name, value in req.headers:
            lower = name.lower()
            if lower == b"content-length":
                if value.strip().isdigit() and int(value) > self.bounds.max_body:
                    self._early(req)
            elif lower == b"expect" and value.lower() == b"100-continue":
                req.expects_continue = True

    def on_body(self, body: bytes) -> None:
        req = self.request
        if req is None or req.size > self.bounds.max_body:
            return   # answered already (413): the rest is dropped, and the connection closes
        req.size += len(body)
        req.body.append(body)
        if req.size > self.bounds.max_body:
            self._early(req)

    def on_message_complete(self) -> None:
        req = self.request
        if req is None:
            return
        req.whole = True
        req.keep_alive = self.parser.should_keep_alive()
        self.request = None
        self.ready.append(req)

    def _early(self, req: _Request) -> None:
        """Hand ``req`` to the app before its body is whole: it is too large to be read."""
        req.expects_continue = False
        self.request = None
        self.ready.append(req)

    # ---- the connection's loop -------------------------------------------------------------------

    def serve(self, first: bytes) -> None:
        try:
            if self._serve(first):
                self._linger()
        except OSError:   # the peer left, or took no byte of an answer for write_timeout
            pass

    def _serve(self, first: bytes) -> bool:
        """The loop; True when this side ends the connection, False when the peer did or a
        bound ran out while reading."""
        data = first
        while True:
            if not data:
                data = self._recv()
                if not data:
                    return False
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._answer_ready()
                return True   # no protocol switch here: what follows the request is not HTTP
            except httptools.HttpParserError as exc:
                refused = exc.__context__
                if self._answer_ready():
                    self._refuse(refused.status if isinstance(refused, _Refused) else 400)
                return True
            if not self._answer_ready():
                return True
            if self.in_head:
                self.head_bytes += len(data)
                if self.head_bytes > self.bounds.max_head:
                    self._refuse(431)
                    return True
            elif self.request is not None:
                if self.request.expects_continue and not self.continue_sent:
                    self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self.continue_sent = True
            data = b""

    def _linger(self) -> None:
        """Closing with input unread resets the connection, and the peer may lose the answer
        before it reads it: stop sending, then read and drop what still comes, for a bound."""
        sock = self.sock
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + self.bounds.linger
        while True:
            wait = end - time.monotonic()
            if wait <= 0:
                return
            sock.settimeout(wait)
            try:
                if not sock.recv(65536):
                    return
            except socket.timeout:
                return

    def _recv(self) -> bytes:
        """The next bytes; b"" when the peer left, or a bound ran out (see the module docstring)."""
        bounds = self.bounds
        if self.request is None:
            wait = bounds.idle_timeout
        else:
            wait = self.began + bounds.request_timeout - time.monotonic()
            if wait <= 0:
                self._refuse(408)
                return b""
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            if self.request is not None:
                self._refuse(408)
            return b""
        except OSError:
            return b""

    def _answer_ready(self) -> bool:
        """Answer the complete requests in order; False once the connection must close."""
        ready = self.ready
        while ready:
            req = ready.popleft()
            self.continue_sent = False
            if not self._answer(req) or not req.whole:
                return False
        return True

    def _answer(self, req: _Request) -> bool:
        """Run the app for ``req`` and write its answer; False when the connection closes after."""
        started = time.monotonic()
        environ = self._environ(req)
        answer: List[Any] = []

        def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None):
            answer[:] = [status, headers]
            return _no_write

        try:
            result = self.app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            status, headers = answer
        except Exception:
            log.exception("HTTP %s %s failed", environ["REQUEST_METHOD"], environ["PATH_INFO"])
            self._refuse(500)
            return False
        keep = req.keep_alive and req.whole
        head, keep = _head(status, headers, len(body), keep, req.version)
        code = int(status[:3])
        if req.method != b"HEAD" and code not in _NO_BODY:
            head += body
        self._write(head)
        access = self.bounds.access_log
        if access is not None and access.isEnabledFor(logging.DEBUG):
            access.debug('%s "%s %s HTTP/%s" %s %d %.6f', environ["REMOTE_ADDR"],
                         environ["REQUEST_METHOD"], req.url.decode("latin-1"), req.version,
                         code, len(body), time.monotonic() - started)
        return keep

    def _environ(self, req: _Request) -> dict:
        environ = self.base.copy()
        path, _, query = req.url.partition(b"?")
        environ["REQUEST_METHOD"] = req.method.decode("latin-1")
        environ["PATH_INFO"] = (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        environ["SERVER_PROTOCOL"] = "HTTP/" + req.version
        keys = _KEYS
        for name, value in req.headers:
            key = keys.get(name)
            if key is None:
                key = _key(name)
            if key:
                value = value.decode("latin-1").strip()
                environ[key] = environ[key] + "," + value if key in environ else value
        environ["wsgi.input"] = io.BytesIO(b"".join(req.body) if len(req.body) != 1
                                           else req.body[0])
        return environ

    def _refuse(self, status: int) -> None:
        """Answer ``status`` with no body and close (the caller returns after this)."""
        try:
            self._write(b"HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n%s\r\n"
                        % (_REFUSALS[status], _date_line()))
        except OSError:
            pass

    def _write(self, data: bytes) -> None:
        sent = self.send_nowait(data)
        if sent < len(data):   # the peer's window is full: wait, but only while it reads
            send_within(self.sock, memoryview(data)[sent:], self.bounds.write_timeout,
                        self.send_nowait)


#: header name -> its environ key ("": left out); names come from peers, so it is bounded
_KEYS: Dict[bytes, str] = {}


def _key(name: bytes) -> str:
    key = name.decode("latin-1").upper().replace("-", "_")
    if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        key = "" if b"_" in name else "HTTP_" + key
    if len(_KEYS) >= 1024:
        _KEYS.clear()
    _KEYS[name] = key
    return key


def _no_write(data: bytes) -> None:
    raise NotImplementedError("this server takes the answer from the app's return value only")


def _head(status: str, headers: List[Tuple[str, str]], length: int, keep: bool,
          version: str) -> Tuple[bytearray, bool]:
    """The status line and header block of an answer, and whether the connection stays open."""
    out = bytearray(b"HTTP/1.1 %s\r\n" % status.encode("latin-1"))
    has_length = False
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length":
            has_length = True
        elif lower == "connection" and value.lower() == "close":
            keep = False
        out += b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
    if not has_length and int(status[:3]) not in _NO_BODY:
        out += b"Content-Length: %d\r\n" % length
    if not keep:
        out += b"Connection: close\r\n"
    elif version == "1.0":
        out += b"Connection: keep-alive\r\n"
    out += _date_line()
    out += b"\r\n"
    return out, keep


def _name_of(sock: Any) -> Tuple[str, str]:
    try:
        name = sock.getsockname()
    except OSError:
        return "", ""
    return (str(name[0]), str(name[1])) if isinstance(name, tuple) else (str(name), "")


def serve(sock: Any, peer: Any, app: Callable, bounds: HttpBounds, first: bytes = b"") -> None:
    """Serve HTTP/1.1 on ``sock`` with the WSGI ``app`` until the peer leaves or a bound ends it;
    ``first``: bytes already read from it (a node sniffs them to tell HTTP from msgpack)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
    _Connection(sock, peer, app, bounds).serve(first)
