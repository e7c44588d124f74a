"""etcd settings: where etcd is (endpoints) and how to reach it (TLS, credentials, timeout) - the
value object every :class:`~framework.etcd.client.Etcd` of a program is built from.

Immutable and passed explicitly; :meth:`EtcdConfig.from_env` is the one place that reads the
environment, and only when a program asks it to.
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Sequence, Union

from ..tls import client_tls_context

if TYPE_CHECKING:
    from .client import Etcd

DEFAULT_ENDPOINT = "127.0.0.1:2379"


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
    ``keep_alive=False`` opens a connection per request instead of reusing idle ones (for
    measurements; there is no other reason to turn reuse off).
    """

    endpoints: Union[str, Sequence[str], None] = None
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    timeout: float = 5.0
    keep_alive: bool = True

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
        from .client import Etcd   # the client module imports this one
        return Etcd(self.endpoints, timeout=self.timeout, username=self.username,
                    password=self.password, tls=self.ssl_context(), keep_alive=self.keep_alive)

    def __repr__(self) -> str:  # never print the password
        return (f"EtcdConfig(endpoints={self.endpoints!r}, ca={self.ca!r}, cert={self.cert!r}, "
                f"key={self.key!r}, username={self.username!r}, "
                f"password={'***' if self.password else None}"
                f"{'' if self.keep_alive else ', keep_alive=False'})")
