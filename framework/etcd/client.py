"""etcd requests: the one module that talks to etcd, through etcd's v3 JSON gateway (HTTP/1.1).

Everything else uses the narrow interface :class:`EtcdAPI`, which :class:`Etcd` implements; it is
also the seam where tests substitute a fake (``tests/test_etcd_interface.py`` keeps both in step).

Why the JSON gateway and ``http.client`` rather than a gRPC client: the same code must run in an
unpatched threaded program and in a gevent-patched one. ``http.client`` uses whatever ``socket`` the
process has, so it is cooperative under gevent and plain blocking under threads, with no gRPC
event-engine to integrate, no poisoned endpoints after an error and no reconnect backoff of its own.
Unary calls travel on keep-alive connections that :class:`~framework.etcd.connections.Connections`
lends out one request at a time, so instances are safe to share between threads and greenlets. A
watch holds one streaming connection of its own.

Endpoints are tried in order starting with the last one that worked; a connection-level failure moves
on to the next, so losing one member of a cluster costs one connect attempt.

Security: :class:`~framework.etcd.config.EtcdConfig` carries the endpoints plus TLS (a CA to verify
etcd's server certificate, and a client certificate and key when etcd runs with
``--client-cert-auth``) and username/password auth. Every connection - unary calls and watches, from
registration and discovery alike - is made by :class:`Etcd`, so one config secures all of them. With a
username, the client authenticates once (``/v3/auth/authenticate``), sends the token on every request,
and authenticates again when etcd says the token is invalid or expired (etcd forgets simple tokens
when it restarts).
"""
from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
from typing import (Any, Generator, List, NamedTuple, Optional, Protocol, Sequence, Tuple, Union,
                    runtime_checkable)

from ..errors import EtcdError, WatchLost
from .config import parse_endpoints
from .connections import Connection, Connections

log = logging.getLogger(__name__)


class KV(NamedTuple):
    key: str
    value: bytes
    mod_revision: int
    lease: int


class Event(NamedTuple):
    type: str  # "PUT" or "DELETE"
    kv: KV


#: one watch message: (store revision, the events, cluster id of the answering member)
WatchMessage = Tuple[int, List[Event], Optional[str]]


@runtime_checkable
class WatchStream(Protocol):
    """What :meth:`EtcdAPI.watch` returns. Iterating yields :data:`WatchMessage` until the stream
    fails; the iterator is a generator because the reader closes it when it stops early."""

    def __iter__(self) -> Generator[WatchMessage, None, None]: ...

    def close(self) -> None:
        """Safe from any thread: makes the reader's iteration end."""


@runtime_checkable
class EtcdAPI(Protocol):
    """The etcd operations the rest of the framework uses; every method raises :class:`EtcdError`
    when etcd cannot be reached or refuses."""

    #: the endpoints tried, "host:port" each
    endpoints: List[str]
    #: cluster id reported by the last answer; a change means etcd was replaced
    cluster_id: Optional[str]

    def get_prefix(self, prefix: str) -> Tuple[int, List[KV]]:
        """The store revision the answer reflects, and every key under ``prefix``."""

    def put(self, key: str, value: Union[str, bytes], lease: int = 0) -> int:
        """Returns the store revision of the write."""

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""

    def keepalive(self, lease: int) -> int:
        """Refresh ``lease`` once. Returns the new TTL; 0 means the lease no longer exists."""

    def revoke(self, lease: int) -> None: ...

    def delete(self, key: str) -> None:
        """Remove ``key`` (a reloaded node no longer serves a service)."""

    def watch(self, prefix: str, start_revision: int, idle_timeout: float = 30.0) -> WatchStream:
        """Watch every key under ``prefix`` from ``start_revision`` on."""


def _b64(s: Union[str, bytes]) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw).decode()


def _kv(d: dict) -> KV:
    return KV(base64.b64decode(d.get("key", "")).decode("utf-8", "replace"),
              base64.b64decode(d.get("value", "")),
              int(d.get("mod_revision", 0)), int(d.get("lease", 0)))


_NOT_JSON = object()


def _decode(raw: bytes) -> Any:
    """JSON ``raw``: ``{}`` for an empty body and ``_NOT_JSON`` for a body that is not JSON (each
    caller reports that)."""
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        return _NOT_JSON


class Etcd:
    """A small etcd v3 client. ``tls`` is an ``ssl.SSLContext`` (see
    :func:`framework.tls.client_tls_context`). ``keep_alive=False`` gives every request a connection
    of its own (for before/after measurements)."""

    def __init__(self, endpoints: Union[str, Sequence[str], None] = None, timeout: float = 5.0,
                 username: Optional[str] = None, password: Optional[str] = None,
                 tls: Optional[ssl.SSLContext] = None, keep_alive: bool = True):
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self.username, self.password = username, password
        self.tls = tls
        self._current = 0
        self._token: Optional[str] = None
        #: cluster id reported by the last answer; a change means etcd was replaced.
        self.cluster_id: Optional[str] = None
        self._connections = Connections(tls, keep_alive)

    @property
    def connections_opened(self) -> int:
        """TCP connections made to etcd so far (each a TLS handshake with TLS), watches included."""
        return self._connections.opened

    @property
    def requests(self) -> int:
        """HTTP requests sent to etcd so far, watches and authentications included."""
        return self._connections.requests

    @property
    def idle_connections(self) -> int:
        """Keep-alive connections waiting for the next request, all endpoints together."""
        return self._connections.idle()

    # ---- transport -----------------------------------------------------------------------------

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        return headers

    def _open(self, path: str, body: dict, timeout: float, stream: bool = False):
        """POST to the first endpoint that answers; returns (connection, response). ``stream``: a
        connection of its own, never pooled (a watch)."""
        payload = json.dumps(body)
        errors = []
        n = len(self.endpoints)
        start = self._current
        for i in range(n):
            index = (start + i) % n
            endpoint = self.endpoints[index]
            conn = None
            try:
                conn, resp = self._connections.request(endpoint, path, payload, self._headers(),
                                                       timeout, stream)
                if resp.status in (502, 503, 504):  # member without a leader, or gateway trouble
                    raise EtcdError(f"{endpoint} answered HTTP {resp.status}: {resp.read()[:200]!r}")
            except (OSError, http.client.HTTPException, EtcdError) as exc:
                if conn is not None:
                    self._connections.discard(conn)
                errors.append(f"{endpoint}: {exc}")
                continue
            self._current = index
            return conn, resp
        raise EtcdError("etcd unreachable: " + "; ".join(errors))

    def _answer(self, conn: Connection, resp: http.client.HTTPResponse) -> Tuple[bytes, Any]:
        """Read the whole body, give the connection back (or close it), decode JSON:
        ``(raw, data)``, ``data`` as :func:`_decode` returns it."""
        try:
            raw = resp.read()
        except BaseException as exc:
            self._connections.discard(conn)
            if isinstance(exc, (OSError, http.client.HTTPException)):
                raise EtcdError(f"etcd read failed: {exc}") from None
            raise
        self._connections.release(conn, resp)
        return raw, _decode(raw)

    def _call(self, path: str, body: dict, retry_auth: bool = True) -> dict:
        if self.username and not self._token:
            self._authenticate()
        conn, resp = self._open(path, body, self.timeout)
        raw, data = self._answer(conn, resp)
        if data is _NOT_JSON:
            raise EtcdError(f"etcd answered non-JSON: {raw[:200]!r}")
        if resp.status != 200:
            message = str(data.get("message") or data.get("error") or raw[:200])
            if retry_auth and self.username and "token" in message:
                self._token = None
                return self._call(path, body, retry_auth=False)
            raise EtcdError(f"etcd {path}: {message}")
        self._note_header(data.get("header") or data.get("result", {}).get("header"))
        return data

    def _note_header(self, header: Optional[dict]) -> None:
        if header and header.get("cluster_id"):
            self.cluster_id = header["cluster_id"]

    def _authenticate(self) -> None:
        conn, resp = self._open("/v3/auth/authenticate",
                                {"name": self.username, "password": self.password or ""}, self.timeout)
        raw, data = self._answer(conn, resp)
        if data is _NOT_JSON:
            data = {"message": raw[:200].decode("utf-8", "replace").strip()}
        if resp.status != 200 or not data.get("token"):
            raise EtcdError(f"etcd authentication as {self.username!r} failed: "
                            f"{data.get('message') or data}")
        self._token = data["token"]

    # ---- key/value -----------------------------------------------------------------------------

    def get_prefix(self, prefix: str) -> Tuple[int, List[KV]]:
        data = self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return int(data["header"]["revision"]), [_kv(d) for d in data.get("kvs", [])]

    def put(self, key: str, value: Union[str, bytes], lease: int = 0) -> int:
        body: dict = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self._call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> None:
        self._call("/v3/kv/deleterange", {"key": _b64(key)})

    def delete_prefix(self, prefix: str) -> None:
        self._call("/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})

    # ---- leases --------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self._call("/v3/lease/grant", {"TTL": int(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        data = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(data.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self._call("/v3/lease/revoke", {"ID": str(lease)})

    # ---- watch ---------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, idle_timeout: float = 30.0) -> "Watch":
        """Open a watch on ``prefix`` from ``start_revision``; iterate it for lists of events."""
        if self.username and not self._token:
            self._authenticate()
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision), "progress_notify": True}}
        conn, resp = self._open("/v3/watch", body, idle_timeout, stream=True)
        if resp.status != 200:
            raw = resp.read()[:200]
            conn.close()
            raise EtcdError(f"etcd watch refused: HTTP {resp.status} {raw!r}")
        return Watch(conn, resp)

    def close(self) -> None:
        """Close the idle keep-alive connections (watches close themselves). The client stays
        usable: a later call connects again."""
        self._connections.close()


class Watch:
    """One streaming watch (a :class:`WatchStream`). Iterating raises :class:`WatchLost` when the
    stream ends or etcd cancels it, and ``socket.timeout`` after ``idle_timeout`` without a message
    (the caller then resyncs, which also catches a silently dead stream)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._conn, self._resp = conn, resp

    def __iter__(self) -> Generator[WatchMessage, None, None]:
        try:
            yield from self._messages()
        finally:
            # closed by the reading thread only: closing a buffered reader that another
            # thread is blocked in raises "reentrant call"
            self._conn.close()

    def _messages(self) -> Generator[WatchMessage, None, None]:
        while True:
            try:
                line = self._resp.readline(16 * 1024 * 1024)
            except (socket.timeout, TimeoutError):
                raise
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise WatchLost(f"watch stream broke: {exc}") from None
            if not line:
                raise WatchLost("watch stream closed by etcd")
            try:
                msg = json.loads(line)
            except ValueError:
                raise WatchLost(f"watch stream sent garbage: {line[:200]!r}") from None
            if "error" in msg:
                raise WatchLost(f"watch error: {msg['error']}")
            result = msg.get("result", {})
            header = result.get("header", {})
            compact = int(result.get("compact_revision", 0) or 0)
            if compact or result.get("canceled"):
                raise WatchLost(f"watch cancelled: {result.get('cancel_reason', 'compacted')}",
                                compact_revision=compact)
            events = [Event(e.get("type", "PUT"), _kv(e.get("kv", {})))
                      for e in result.get("events", ())]
            yield int(header.get("revision", 0)), events, header.get("cluster_id")

    def close(self) -> None:
        """Safe from any thread: shutdown wakes the reader, whose iterator then closes the socket."""
        try:
            sock = self._conn.sock
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
