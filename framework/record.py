"""The registry record: what a node writes under ``<prefix><Service>/<host:port>`` and what every
reader (discovery, the CLI) gets back from it.

A node builds one record per service it serves (:func:`build`); readers turn any value they find
under the prefix into a :class:`Node` (:func:`parse`). Besides our JSON records, :func:`parse`
accepts a bare ``{"address": ...}`` written by another language and the reference article's plain
``host:port`` value, so nodes of other implementations can share a registry::

    {"address": "10.0.0.5:7001", "service": "HelloService", "protocol": "jsonrpc2-msgpack/1",
     "methods": {"Hello": {"idempotent": true}}, "pid": 4242, "hostname": "web-1",
     "version": "0.1.0", "started": 1764600000.123, "labels": {"zone": "eu-1", "version": "v2"},
     ...metadata given to the Server}

A node run with ``--workers N`` adds ``"workers": N`` (its supervisor's record; ``pid`` is a
worker's): clients open that many connections to it, so their calls reach every worker.

A cache of many nodes (:class:`framework.discovery.Discovery`) reads records with
:class:`Records`: it keeps only :data:`KEPT` - what callers route by and what operators are shown -
and shares identical method tables, label dicts and strings between nodes (the nodes of one service
usually publish the same ones): 644 bytes of Python heap per cached node, against 2,285 for the
whole decoded record (``bench/registry.py``, 10,000 nodes).
The ``meta`` of such a node is read-only: its tables are other nodes' too. :func:`parse` keeps the
whole record (``framework ls`` shows all of it).

``labels`` are what callers route by (:mod:`framework.routing`): ``lane`` (swim lanes), ``weight``
(share of traffic, default 100) and any the callers prefer (``Client(prefer={"zone": "eu-1"})``).
String keys and values, at most :data:`MAX_LABELS` of them, each at most :data:`MAX_LABEL`
characters; a ``weight`` must be an integer from 0 to 10000.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any, Dict, NamedTuple, Optional

log = logging.getLogger(__name__)

PROTOCOL = "jsonrpc2-msgpack/1"
#: fields every record of ours has; anything else came from the Server's ``metadata``
STANDARD = ("address", "service", "methods", "protocol", "pid", "hostname", "version", "started",
            "labels", "workers")
#: what :class:`Records` keeps: routing (address, protocol, methods, labels, workers, tls) and what
#: operators are shown (version, started, pid, hostname); not ``service`` (the cache's key says it)
#: nor any other metadata
KEPT = ("address", "protocol", "methods", "labels", "workers", "tls", "version", "started", "pid",
        "hostname")
#: values :class:`Records` shares between nodes (strings, method tables, label dicts)
SHARED = ("protocol", "methods", "labels", "version", "hostname")
MAX_LABELS, MAX_LABEL = 16, 63


class Node(NamedTuple):
    key: str
    address: str                # "host:port"
    meta: dict                  # the registration record (may hold only "address")

    def idempotent(self, method: str) -> Optional[bool]:
        """True/False when the node advertises the method, None when it publishes no method table."""
        methods = self.meta.get("methods")
        if not isinstance(methods, dict):
            return None
        spec = methods.get(method)
        if spec is None:
            return False
        return bool(spec.get("idempotent")) if isinstance(spec, dict) else False

    def has_method(self, method: str) -> Optional[bool]:
        methods = self.meta.get("methods")
        return method in methods if isinstance(methods, dict) else None

    def label(self, name: str) -> Optional[str]:
        labels = self.meta.get("labels")
        return labels.get(name) if isinstance(labels, dict) else None

    def weight(self, default: int) -> int:
        """The node's ``weight`` label (0 to 10000), else ``default``."""
        text = self.label("weight")
        if text is None:
            return default
        try:
            return min(10000, max(0, int(text)))
        except ValueError:
            return default

    def matches(self, wanted: Dict[str, str]) -> bool:
        """True when the node's labels include every ``key: value`` of ``wanted``."""
        labels = self.meta.get("labels")
        return isinstance(labels, dict) and all(labels.get(k) == v for k, v in wanted.items())


def check_labels(labels: Optional[Dict[str, str]]) -> Dict[str, str]:
    """``labels`` as published, or ValueError naming what is wrong with them."""
    labels = dict(labels or {})
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, got {len(labels)}")
    for k, v in labels.items():
        if not (isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= MAX_LABEL
                and len(v) <= MAX_LABEL):
            raise ValueError(f"label {k!r}={v!r}: keys and values are strings of at most "
                             f"{MAX_LABEL} characters (keys not empty)")
    if "weight" in labels and not (labels["weight"].isdigit() and int(labels["weight"]) <= 10000):
        raise ValueError(f"label weight={labels['weight']!r}: an integer from 0 to 10000")
    return labels


def key(prefix: str, service: str, address: str) -> str:
    """Where a node of ``service`` at ``address`` is registered (``prefix`` ends with ``/``)."""
    return f"{prefix}{service}/{address}"


def build(spec: Any, address: str, started: float, version: str,
          metadata: Optional[Dict[str, Any]] = None,
          labels: Optional[Dict[str, str]] = None) -> dict:
    """The record a node publishes for one :class:`~framework.service.ServiceSpec`."""
    methods = {m.name: {"idempotent": m.idempotent} for m in spec.methods.values()}
    return {"address": address, "service": spec.name, "methods": methods, "protocol": PROTOCOL,
            "pid": os.getpid(), "hostname": socket.gethostname(), "version": version,
            "started": started, "labels": dict(labels or {}), **(metadata or {})}


def encode(record: dict) -> str:
    return json.dumps(record)


def _decode(record_key: str, value: bytes) -> Optional[dict]:
    """A value found under the prefix -> the record as a dict, or None (logged) when it names no
    address."""
    text = value.decode("utf-8", "replace").strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = text
    if isinstance(decoded, dict) and isinstance(decoded.get("address"), str):
        return decoded
    if isinstance(decoded, str) and ":" in decoded and " " not in decoded:
        return {"address": decoded}
    log.warning("ignoring unreadable registration %s = %r", record_key, text[:200])
    return None


def parse(record_key: str, value: bytes) -> Optional[Node]:
    """A value found under the prefix -> :class:`Node` with the whole record, or None (logged) when
    it names no address."""
    meta = _decode(record_key, value)
    return None if meta is None else Node(record_key, meta["address"], meta)


class Records:
    """Reads the records of one cache into lean :class:`Node` objects: only the :data:`KEPT` fields,
    each :data:`SHARED` value one object for every node that publishes an equal one. Holds at
    most ``limit`` distinct values, then starts sharing afresh (nodes keep what they have)."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._shared: Dict[Any, Any] = {}

    def parse(self, record_key: str, value: bytes) -> Optional[Node]:
        """As :func:`parse`, keeping only :data:`KEPT`."""
        decoded = _decode(record_key, value)
        if decoded is None:
            return None
        meta = {}
        for name in KEPT:   # the names are this module's constants: one string for every node
            field = decoded.get(name)
            if field is not None:
                meta[name] = self._share(name, field) if name in SHARED else field
        return Node(record_key, meta["address"], meta)

    def _share(self, name: str, value: Any) -> Any:
        try:
            if name == "methods" and isinstance(value, dict):
                # only the idempotent flags are kept, in the form build() writes
                flags = tuple((m, bool(spec.get("idempotent")) if isinstance(spec, dict) else False)
                              for m, spec in value.items())
                token: Any = (name, flags)
            elif isinstance(value, dict):
                token = (name, tuple(value.items()))
            else:
                token = (name, type(value), value)
            shared = self._shared.get(token)
        except TypeError:   # an unhashable part (a list in a label): this node's own copy
            return value
        if shared is None:
            if name == "methods" and isinstance(value, dict):
                value = {m: {"idempotent": flag} for m, flag in flags}
            if len(self._shared) >= self.limit:
                self._shared = {}
            shared = self._shared.setdefault(token, value)
        return shared


def summary(node: Node, now: float) -> str:
    """One line for people: address, pid, host, version, uptime and any extra metadata."""
    meta = node.meta
    parts = [node.address]
    for name in ("pid", "hostname", "version", "workers"):
        if name in meta:
            parts.append(f"{name}={meta[name]}")
    started = meta.get("started")
    if isinstance(started, (int, float)) and started > 0:
        parts.append(f"up={max(0, int(now - started))}s")
    if labels_text(meta):
        parts.append(labels_text(meta))
    parts += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
              for k, v in sorted(meta.items()) if k not in STANDARD]
    return "  ".join(parts)


def labels_text(meta: dict) -> str:
    """``labels[version=v2,zone=eu-1]``, or "" when the record has none."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        return ""
    return "labels[" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "]"


def methods_line(node: Node) -> Optional[str]:
    """``methods: Hello*, Pid   (* idempotent)``, or None when the node publishes no method table."""
    methods = node.meta.get("methods")
    if not isinstance(methods, dict):
        return None
    names = [f"{m}*" if isinstance(spec, dict) and spec.get("idempotent") else m
             for m, spec in sorted(methods.items())]
    return "methods: " + ", ".join(names) + ("   (* idempotent)" if any("*" in n for n in names)
                                              else "")
