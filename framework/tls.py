"""TLS: every ``ssl.SSLContext`` the framework uses is built here - for etcd's client port, and for
both ends of a node's RPC port - so certificate handling has one set of rules.

Contexts start from ``ssl.create_default_context``: certificate and host-name verification on, the
system's minimum protocol version. A CA file replaces the system store; a client certificate is
presented only when one is given (etcd ``--client-cert-auth``, or a node's mutual TLS).
"""
from __future__ import annotations

import ssl
from typing import Optional


def client_tls_context(ca: Optional[str] = None, cert: Optional[str] = None,
                       key: Optional[str] = None) -> ssl.SSLContext:
    """The client side of a TLS connection (to etcd, or to a node's RPC port): verify the server
    against ``ca`` (default: the system store); present ``cert``/``key`` when the server asks for
    client certificates."""
    if key and not cert:
        raise ValueError("a client key needs its certificate (cert=...)")
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def server_tls_context(cert: str, key: Optional[str] = None,
                       client_ca: Optional[str] = None) -> ssl.SSLContext:
    """The server side of a node's TLS RPC port: present ``cert``/``key``; with ``client_ca``, also
    require and verify a client certificate signed by it (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE
    return ctx
