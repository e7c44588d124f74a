"""HTTP/1.1 connections: bytes in, requests parsed, a WSGI app called, answers out.

The gateway and every node's HTTP port serve their WSGI app (:class:`framework.web.HttpSurface`)
with :func:`serve`, one call per accepted connection. Requests are parsed by ``httptools`` (llhttp,
the C parser of Node.js), answered in order (pipelined ones too) and kept alive as HTTP/1.1 says.
gevent's ``pywsgi`` cost about 95 µs of CPU per request before any app ran; this costs about 20
(docs/performance.md, rounds 10 and 14).

Every bound ends in a clear answer, and then the connection closes:

* a request head over ``max_head`` bytes or :data:`MAX_HEADERS` lines -> 431;
* a body over ``max_body`` -> the app is called at once with what came (it answers 413: see
  :func:`framework.jsonrpc_http.read_body`), and the rest is never read;
* a request that is not HTTP/1.x -> 400;
* a request begun must arrive whole within ``request_timeout`` (408), and a keep-alive connection
  idle for ``idle_timeout`` is closed; one greenlet per process keeps these two (:class:`_Reaper`);
* a peer that takes no byte of an answer for ``write_timeout`` is cut off;
* ``Expect: 100-continue`` gets its ``100 Continue`` once the head is accepted;
* a connection this side closes first stops sending, then drops what the peer still sends for up
  to ``linger`` seconds: closed with input unread, it would be reset, and the peer could lose the
  answer (a 413, say) before reading it.

The WSGI side (the environ, the app's answer, its head) is :mod:`framework.wsgi`'s.
"""
from __future__ import annotations

import collections
import logging
import os
import socket
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable, Deque, List, Optional, Set, Tuple

import gevent
import httptools

from . import wsgi
from .writing import send_within, sender

log = logging.getLogger(__name__)

#: header lines one request may carry, as http.client allows
MAX_HEADERS = 100


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

    def __post_init__(self):
        for name in ("max_body", "max_head", "request_timeout", "idle_timeout", "write_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0, got {getattr(self, name)}")
        if not self.linger >= 0:
            raise ValueError(f"linger must be 0 or more, got {self.linger}")


class _Refused(Exception):
    """Raised from a parser callback: answer with this status and close."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


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
                 "head_bytes", "began", "send_nowait", "continue_sent", "answering", "idle_since")

    def __init__(self, sock: Any, peer: Any, app: Callable, bounds: HttpBounds):
        self.sock = sock
        self.app = app
        self.bounds = bounds
        self.base = wsgi.base_environ(sock, peer)
        self.parser = httptools.HttpRequestParser(self)
        self.request: Optional[_Request] = None     # the one being received
        self.ready: Deque[_Request] = collections.deque()
        self.in_head = False      # a request's head has begun and is not finished
        self.head_bytes = 0       # bytes received while a head was unfinished
        self.began = 0.0          # when the request being received began
        self.send_nowait = sender(sock)
        self.continue_sent = False
        self.answering = False    # the app runs, or an answer is being written: no bound applies
        self.idle_since = time.monotonic()

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
        self.sock.settimeout(None)   # the reaper bounds the reads: no timer per recv
        _REAPER.add(self)
        try:
            ours = self._serve(first)
            _REAPER.live.discard(self)
            if ours:
                self._linger()
        except OSError:   # the peer left, or took no byte of an answer for write_timeout
            pass
        finally:
            _REAPER.live.discard(self)

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
        """The next bytes; b"" when the peer left, or the reaper ended the connection."""
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def check(self, now: float) -> None:
        """The reaper's look (see :class:`_Reaper`): end the connection if its request has been
        arriving for longer than ``request_timeout`` (408), or it sat idle for ``idle_timeout``."""
        if self.answering:
            return
        bounds = self.bounds
        if self.request is not None:
            if now - self.began > bounds.request_timeout:
                self._end(self._refusal(408))
        elif now - self.idle_since > bounds.idle_timeout:
            self._end(b"")

    def _end(self, last: bytes) -> None:
        try:
            if last:
                self.send_nowait(last)   # best effort: the reaper waits on no peer
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the recv of the connection's greenlet
        except OSError:
            pass

    def _answer_ready(self) -> bool:
        """Answer the complete requests in order; False once the connection must close."""
        ready = self.ready
        if not ready:
            return True
        self.answering = True
        try:
            while ready:
                req = ready.popleft()
                self.continue_sent = False
                if not self._answer(req) or not req.whole:
                    return False
        finally:
            self.answering = False
            self.idle_since = time.monotonic()
        return True

    def _answer(self, req: _Request) -> bool:
        """Run the app for ``req`` and write its answer; False when the connection closes after."""
        started = time.monotonic()
        environ = wsgi.environ(self.base, req.method, req.version, req.url, req.headers, req.body)
        try:
            status, headers, body = wsgi.run(self.app, environ)
        except Exception:
            log.exception("HTTP %s %s failed", environ["REQUEST_METHOD"], environ["PATH_INFO"])
            self._refuse(500)
            return False
        keep = req.keep_alive and req.whole
        head, keep = wsgi.head(status, headers, len(body), keep, req.version)
        code = int(status[:3])
        if req.method != b"HEAD" and code not in wsgi.NO_BODY:
            head += body
        self._write(head)
        access = self.bounds.access_log
        if access is not None and access.isEnabledFor(logging.DEBUG):
            access.debug('%s "%s %s HTTP/%s" %s %d %.6f', environ["REMOTE_ADDR"],
                         environ["REQUEST_METHOD"], req.url.decode("latin-1"), req.version,
                         code, len(body), time.monotonic() - started)
        return keep

    def _refuse(self, status: int) -> None:
        """Answer ``status`` with no body and close (the caller returns after this)."""
        try:
            self._write(self._refusal(status))
        except OSError:
            pass

    @staticmethod
    def _refusal(status: int) -> bytes:
        return (b"HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n%s\r\n"
                % (b"%d %s" % (status, HTTPStatus(status).phrase.encode()), wsgi.date_line()))

    def _write(self, data: bytes) -> None:
        sent = self.send_nowait(data)
        if sent < len(data):   # the peer's window is full: wait, but only while it reads
            send_within(self.sock, memoryview(data)[sent:], self.bounds.write_timeout,
                        self.send_nowait)


class _Reaper:
    """The time bounds of a process's open connections, looked at by one greenlet every
    ``tick``: a timeout on each read would start and stop a timer per request (about 15 µs of a
    round trip). A bound is thus kept to within a quarter of itself, and to within a second."""

    def __init__(self):
        self.live: Set[_Connection] = set()   # each leaves in its own serve()'s finally
        self.tick = 1.0
        self.greenlet: Any = None
        self.pid = 0

    def add(self, conn: _Connection) -> None:
        self.live.add(conn)
        shortest = min(conn.bounds.request_timeout, conn.bounds.idle_timeout)
        self.tick = min(self.tick, max(0.02, shortest / 4))
        if self.greenlet is None or self.pid != os.getpid():   # none yet, or a forked child
            self.pid = os.getpid()
            self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while self.live:
            gevent.sleep(self.tick)
            now = time.monotonic()
            for conn in list(self.live):
                conn.check(now)
        self.greenlet = None


_REAPER = _Reaper()


def serve(sock: Any, peer: Any, app: Callable, bounds: HttpBounds, first: bytes = b"") -> None:
    """Serve HTTP/1.1 on ``sock`` with the WSGI ``app`` until the peer leaves or a bound ends it;
    ``first``: bytes already read from it (a node sniffs them to tell HTTP from msgpack)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
    _Connection(sock, peer, app, bounds).serve(first)
