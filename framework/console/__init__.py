"""Operator console: the gateway's ``GET /ui`` - what the gateway sees of the registry, live.

The last step of the data flow, for people: the browser loads ``/ui`` (``index.html``),
``/ui/console.css`` and ``/ui/console.js`` - package data, no build step, nothing from a CDN - then
polls ``GET /ui/state`` twice a second. The state is built from what the gateway already holds:

* service names: :meth:`Discovery.services` (one etcd list, re-read at most every
  ``names_refresh`` seconds, and never more than a tenth of the time: a list that took 50 ms is
  re-read at most every 0.5 s) plus every service the gateway's cache watches, so a service whose
  last node left stays on screen with 0 nodes;
* nodes: the watched cache (the console watches each listed service), each node's record - labels,
  version, ``started``, pid, host, workers - and the gateway client's view of its health
  (``ok``, ``ejected`` after failures, ``stalled`` when a liveness ping went unanswered);
* calls and errors: the gateway's own counters (cumulative; the page turns them into rates). A
  gateway run with ``--workers`` has one set per worker process: the state names the worker (its
  pid) whose numbers it gives, and the page computes rates from one worker's numbers at a time.

A built state is served to every console for ``max_age`` seconds, or until the watched cache
changes (but at least ``min_age``): however many consoles are open, the gateway builds it at most
once per ``max_age`` while nothing changes and once per ``min_age`` under churn, and a node joining
or leaving shows at the next poll. At most ``max_services`` services and ``max_nodes`` nodes per
service are listed (the totals are always given).

The page is read-only except for its call form, which sends JSON-RPC to ``POST /`` like any caller;
its fields come from ``GET /openrpc.json`` when the gateway serves it. When the gateway has a token,
:func:`token_guard` makes a browser's calls carry it (``Authorization: Bearer <token>``).
"""
from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from importlib import resources
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import __version__
from ..errors import EtcdError, RpcError, Unauthorized
from ..httpapi import bearer_meta
from ..metrics import UNKNOWN
from ..record import Node
from ..web import Page, json_body

log = logging.getLogger(__name__)

#: the package data served, by path: (file, content type)
STATIC = {"/ui": ("index.html", "text/html; charset=utf-8"),
          "/ui/": ("index.html", "text/html; charset=utf-8"),
          "/ui/console.js": ("console.js", "text/javascript; charset=utf-8"),
          "/ui/console.css": ("console.css", "text/css; charset=utf-8")}
#: record fields shown as they are, when a node's record has them
NODE_FIELDS = ("version", "pid", "hostname", "workers")


def pages(gateway: Any) -> Dict[str, Page]:
    """The console's routes for ``gateway.wsgi.pages``."""
    return Console(gateway).pages


def token_guard(token: Optional[str]) -> Optional[Callable[[dict], Optional[RpcError]]]:
    """With a gateway token: a ``POST /`` from a browser page must carry that token.

    Browsers send ``Origin`` with every POST (same-origin ones included) and no page can remove it,
    so the console's form - or any other site's page an operator happens to open - calls through
    the gateway only with ``Authorization: Bearer <token>``. Programs send no ``Origin`` and are
    served as before: for them the gateway stays the trusted front door. None without a token.
    """
    if token is None:
        return None
    expected = token.encode()

    def guard(environ: dict) -> Optional[RpcError]:
        if "HTTP_ORIGIN" not in environ:
            return None
        given = (bearer_meta(environ) or {}).get("token") or ""
        if hmac.compare_digest(given.encode(), expected):
            return None
        return Unauthorized("a call from a browser page needs the gateway's token "
                            "(Authorization: Bearer <token>)")
    return guard


class Console:
    """The state behind ``/ui/state`` and the console's static files, for one gateway."""

    #: seconds a built state is served again (while the watched cache does not change)
    max_age = 0.25
    #: seconds a built state is served again even after a change (bounds builds under churn)
    min_age = 0.05
    #: seconds between re-reads of the registry's service names (and at least 10x a read's time)
    names_refresh = 0.5
    #: seconds the first build waits for the first lists of services it starts watching
    first_list_wait = 0.5
    #: services listed, and nodes listed per service: bounds the page (and its JSON, ~200 KB)
    max_services = 50
    max_nodes = 20

    def __init__(self, gateway: Any):
        self.gateway = gateway
        self.discovery = gateway.client.discovery
        self._files = {path: (kind, _read(name)) for path, (name, kind) in STATIC.items()}
        self._body = b""
        self._built_at = -1e9
        self._changed = True
        self._names: List[str] = []
        self._names_at = -1e9
        self._names_cost = 0.0
        self._registry_error: Optional[str] = None
        self._lock = threading.Lock()
        self.builds = 0
        self.discovery.subscribe(self._on_change)

    @property
    def pages(self) -> Dict[str, Page]:
        routes: Dict[str, Page] = {path: self._static for path in self._files}
        routes["/ui/state"] = self._state_page
        return routes

    def _static(self, environ: dict) -> Tuple[int, str, bytes]:
        kind, body = self._files[environ.get("PATH_INFO", "/ui")]
        return 200, kind, body

    def _state_page(self, environ: dict) -> Tuple[int, str, bytes]:
        return 200, "application/json", self.state_json()

    def _on_change(self, service: str, added, removed, snapshot) -> None:
        self._changed = True   # runs on the watch worker: only a flag, the next poll rebuilds

    # ---- the state, cached -----------------------------------------------------------------------

    def state_json(self) -> bytes:
        """The current state as JSON, built at most once per ``max_age`` (see the module doc)."""
        age = time.monotonic() - self._built_at
        if age < self.min_age or (age < self.max_age and not self._changed):
            return self._body
        if not self._lock.acquire(blocking=not self._body):
            return self._body   # another request is building it: the last one is fresh enough
        try:
            self._changed = False
            self._body = json_body(self.state())
            self._built_at = time.monotonic()
            self.builds += 1
        finally:
            self._lock.release()
        return self._body

    def state(self) -> dict:
        """Everything the page shows, as one JSON-able dict (uncached)."""
        gateway, client = self.gateway, self.gateway.client
        names = self._service_names()
        calls = _call_counts(gateway.metrics)
        shown = names[:self.max_services]
        for name in shown:
            self.discovery.watch(name)   # all first lists start together
        wait_until = time.monotonic() + self.first_list_wait
        now, mono = time.time(), time.monotonic()
        services = []
        for name in shown:
            nodes = self.discovery.nodes(name, wait=max(0.0, wait_until - time.monotonic()))
            services.append({
                "name": name, "ready": self.discovery.ready(name), "node_count": len(nodes),
                "methods": _methods(nodes),
                "nodes": [_node_view(client, node, now, mono) for node in nodes[:self.max_nodes]],
                "calls": calls.get(name, (0, 0))[0], "errors": calls.get(name, (0, 0))[1]})
        unknown = calls.get(UNKNOWN, (0, 0))
        return {"time": now, "services": services, "service_count": len(names),
                "gateway": {"version": __version__, "pid": os.getpid(),
                            "status": "draining" if gateway.draining else "serving",
                            "token_required": client.token is not None,
                            "unknown_calls": unknown[0]},
                "registry": {"ok": self._registry_error is None, "error": self._registry_error}}

    def _service_names(self) -> List[str]:
        mono = time.monotonic()
        if mono - self._names_at >= max(self.names_refresh, 10 * self._names_cost):
            try:
                self._names = self.discovery.services()
                self._registry_error = None
            except EtcdError as exc:   # keep the last names: the cache still has their nodes
                log.debug("console: listing the services failed: %s", exc)
                self._registry_error = str(exc)
            self._names_at = time.monotonic()
            self._names_cost = self._names_at - mono
        return sorted(set(self._names) | set(self.discovery.stats()))


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def _node_view(client: Any, node: Node, now: float, mono: float) -> dict:
    """One node as the page shows it: its record's fields and the gateway's view of its health."""
    meta = node.meta
    view: Dict[str, Any] = {"address": node.address, "health": _health(client, node.address, mono)}
    labels = meta.get("labels")
    view["labels"] = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    started = meta.get("started")
    if isinstance(started, (int, float)) and not isinstance(started, bool) and started > 0:
        view["uptime_s"] = round(max(0.0, now - started), 1)
    for name in NODE_FIELDS:
        value = meta.get(name)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            view[name] = value
    return view


def _health(client: Any, address: str, mono: float) -> str:
    if client.health.usable(address, mono):
        return "ok"
    return "stalled" if client.pool.stalled(address, mono) else "ejected"


def _methods(nodes: Tuple[Node, ...]) -> List[str]:
    """The methods the service's nodes advertise (their records' method tables), sorted."""
    names = set()
    for node in nodes:
        methods = node.meta.get("methods")
        if isinstance(methods, dict):
            names.update(m for m in methods if isinstance(m, str))
    return sorted(names)


def _call_counts(metrics: Any) -> Dict[str, Tuple[int, int]]:
    """Calls and errors (any outcome but ``ok``) so far, by service: the gateway's counters."""
    counts: Dict[str, List[int]] = {}
    family = next(f for f in metrics.collect() if f.name == f"{metrics.namespace}_calls")
    for sample in family.samples:
        if sample.name.endswith("_total"):
            entry = counts.setdefault(sample.labels["service"], [0, 0])
            entry[0] += int(sample.value)
            if sample.labels["outcome"] != "ok":
                entry[1] += int(sample.value)
    return {service: (n, errors) for service, (n, errors) in counts.items()}
