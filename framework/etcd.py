"""etcd access: the one module that talks to etcd, through etcd's v3 JSON gateway (HTTP/1.1).

Everything else uses the narrow interface :class:`EtcdAPI`, which :class:`Etcd` implements; it is
also the seam where tests substitute a fake (``tests/test_etcd_interface.py`` keeps both in step).

Why the JSON gateway and ``http.client`` rather than a gRPC client: the same code must run in an
unpatched threaded program and in a gevent-patched one. ``http.client`` uses whatever ``socket`` the
process has, so it is cooperative under gevent and plain blocking under threads, with no gRPC
event-engine to integrate, no poisoned endpoints after an error and no reconnect backoff of its own.
Each unary call opens a short-lived connection, so instances are safe to share between threads and
greenlets. A watch holds one streaming connection.

Endpoints are tried in order starting with the last one that worked; a connection-level failure moves
on to the next, so losing one member of a cluster costs one connect attempt.

Security: :class:`EtcdConfig` carries the endpoints plus TLS (a CA to verify etcd's server certificate,
and a client certificate and key when etcd runs with ``--client-cert-auth``) and username/password
auth. Every connection - unary calls and watches, from registration and discovery alike - is made by
:class:`Etcd`, so one config secures all of them. With a username, the client authenticates once
(``/v3/auth/authenticate``), sends the token on every request, and authenticates again when etcd
says the token is invalid or expired (etcd forgets simple tokens when it restarts).
"""
from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
import os
from dataclasses import dataclass
from typing import (Any, Generator, List, Mapping, NamedTuple, Optional, Protocol, Sequence, Tuple,
                    Union, runtime_checkable)

from .errors import EtcdError, WatchLost
from .tls import client_tls_context

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "127.0.0.1:2379"


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

    def watch(self, prefix: str, start_revision: int, idle_timeout: float = 30.0) -> WatchStream:
        """Watch every key under ``prefix`` from ``start_revision`` on."""


def parse_endpoints(etcd: Union[None, str, Sequence[str]], default: Optional[str] = None) -> List[str]:
    """``"h:p"``, ``"h1:p1,h2:p2"``, a list of those, or None (then ``default``) -> ``["h:p", ...]``."""
    if etcd is None:
        etcd = default or DEFAULT_ENDPOINT
    items = etcd.split(",") if isinstance(etcd, str) else list(etcd)
    endpoints = []
    for item in items:
        item = item.strip()
        for scheme in ("http://", "https://"):
            if item.startswith(scheme):
                item = item[len(scheme):]
        item = item.rstrip("/")
        if item:
            if ":" not in item:
                item += ":2379"
            endpoints.append(item)
    if not endpoints:
        raise ValueError(f"no etcd endpoint in {etcd!r}")
    return endpoints


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach etcd: endpoints, TLS files and credentials. Immutable; build one per program.

    ``endpoints`` accepts ``"h:p"``, ``"h1:p1,h2:p2"``, ``"https://h:p"`` or a list. ``ca`` is the CA
    bundle that signed etcd's server certificate (default: the system store when TLS is on);
    ``cert``/``key`` are the client certificate for ``--client-cert-auth``. TLS is on when any of
    ``ca``, ``cert`` or an ``https://`` endpoint is given. ``username``/``password`` enable etcd auth.
    """

    endpoints: Union[str, Sequence[str], None] = None
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    timeout: float = 5.0

    #: environment variables read by :meth:`from_env` (and by ``serve`` as flag defaults)
    ENV = {"endpoints": "ETCD_ENDPOINTS", "ca": "ETCD_CA", "cert": "ETCD_CERT", "key": "ETCD_KEY",
           "username": "ETCD_USER", "password": "ETCD_PASSWORD"}

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> "EtcdConfig":
        """Settings from ``$ETCD_ENDPOINTS``, ``$ETCD_CA``, ``$ETCD_CERT``, ``$ETCD_KEY``,
        ``$ETCD_USER`` and ``$ETCD_PASSWORD``; ``overrides`` that are not None win."""
        environ = os.environ if environ is None else environ
        values = {field: environ.get(var) or None for field, var in cls.ENV.items()}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def coerce(cls, etcd: Union[None, str, Sequence[str], "EtcdConfig"]) -> "EtcdConfig":
        """``etcd=`` as users pass it: a config as is; endpoints (str or list) with TLS/auth settings
        from the environment; None -> everything from the environment (default 127.0.0.1:2379)."""
        if isinstance(etcd, EtcdConfig):
            return etcd
        return cls.from_env(endpoints=etcd if etcd else None)

    @property
    def tls_enabled(self) -> bool:
        eps = self.endpoints if isinstance(self.endpoints, str) else ",".join(self.endpoints or ())
        return bool(self.ca or self.cert or "https://" in eps)

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        if not self.tls_enabled:
            return None
        return client_tls_context(self.ca, self.cert, self.key)

    def client(self) -> "Etcd":
        """A new :class:`Etcd` built from this config."""
        return Etcd(self.endpoints, timeout=self.timeout, username=self.username,
                    password=self.password, tls=self.ssl_context())

    def __repr__(self) -> str:  # never print the password
        return (f"EtcdConfig(endpoints={self.endpoints!r}, ca={self.ca!r}, cert={self.cert!r}, "
                f"key={self.key!r}, username={self.username!r}, "
                f"password={'***' if self.password else None})")


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


def _answer(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> Tuple[bytes, Any]:
    """Read the whole body, close the connection, decode JSON: ``(raw, data)``. ``data`` is ``{}``
    for an empty body and ``_NOT_JSON`` for a body that is not JSON (each caller reports that)."""
    try:
        raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise EtcdError(f"etcd read failed: {exc}") from None
    finally:
        conn.close()
    try:
        return raw, json.loads(raw or b"{}")
    except ValueError:
        return raw, _NOT_JSON


class Etcd:
    """A small etcd v3 client. ``tls`` is an ``ssl.SSLContext`` (see :func:`framework.tls.client_tls_context`)."""

    def __init__(self, endpoints: Union[str, Sequence[str], None] = None, timeout: float = 5.0,
                 username: Optional[str] = None, password: Optional[str] = None,
                 tls: Optional[ssl.SSLContext] = None):
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self.username, self.password = username, password
        self.tls = tls
        self._current = 0
        self._token: Optional[str] = None
        #: cluster id reported by the last answer; a change means etcd was replaced.
        self.cluster_id: Optional[str] = None

    # ---- transport -----------------------------------------------------------------------------

    def _connection(self, endpoint: str, timeout: float) -> http.client.HTTPConnection:
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")
        if self.tls is not None:
            return http.client.HTTPSConnection(host, int(port), timeout=timeout, context=self.tls)
        return http.client.HTTPConnection(host, int(port), timeout=timeout)

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        return headers

    def _open(self, path: str, body: dict, timeout: float):
        """POST to the first endpoint that answers; returns (connection, response)."""
        payload = json.dumps(body)
        errors = []
        n = len(self.endpoints)
        start = self._current
        for i in range(n):
            index = (start + i) % n
            endpoint = self.endpoints[index]
            conn = self._connection(endpoint, timeout)
            try:
                conn.request("POST", path, payload, self._headers())
                resp = conn.getresponse()
                if resp.status in (502, 503, 504):  # member without a leader, or gateway trouble
                    raise EtcdError(f"{endpoint} answered HTTP {resp.status}: {resp.read()[:200]!r}")
            except (OSError, http.client.HTTPException, EtcdError) as exc:
                conn.close()
                errors.append(f"{endpoint}: {exc}")
                continue
            self._current = index
            return conn, resp
        raise EtcdError("etcd unreachable: " + "; ".join(errors))

    def _call(self, path: str, body: dict, retry_auth: bool = True) -> dict:
        if self.username and not self._token:
            self._authenticate()
        conn, resp = self._open(path, body, self.timeout)
        raw, data = _answer(conn, resp)
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
        raw, data = _answer(conn, resp)
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
        conn, resp = self._open("/v3/watch", body, idle_timeout)
        if resp.status != 200:
            raw = resp.read()[:200]
            conn.close()
            raise EtcdError(f"etcd watch refused: HTTP {resp.status} {raw!r}")
        return Watch(conn, resp)

    def close(self) -> None:
        """Nothing is held between calls; present so callers can treat this like a resource."""


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
