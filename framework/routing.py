"""Routing: a service's live nodes -> the nodes one call may go to, and their weights.

A :class:`Route` is worked out once per (method, lane) and discovery snapshot, so a call does no
per-node work while the registry is unchanged. In order:

1. **Method.** Only nodes that publish the method (or publish no method table).
2. **Lane** (swim lanes). A call in lane ``L`` (baggage ``lane=L``) goes to the nodes labelled
   ``lane=L`` when the service has any, else to the nodes with no ``lane`` label (the baseline).
   A call in no lane never goes to a node that has a ``lane`` label.
3. **Preferred labels** (``Client(prefer={"zone": "eu-1"})``): only nodes with those labels while
   one of them is usable; else every node above, and :attr:`Router.prefer_fallbacks` counts it.
4. **Weights and slow start.** A node's ``weight`` label (default 100) sets its share of traffic;
   a node that joined after the client's first look at the service ramps from 10 % of its weight
   to all of it over ``warmup`` seconds, as Envoy's and Dubbo's slow start do, so a cold process
   is not flooded. While every weight is equal the route carries none, and the balancer does
   plain P2C.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .record import Node

DEFAULT_WEIGHT = 100
#: a warming node's weight starts at this share of its full weight
MIN_RAMP = 0.1
#: seconds between recomputations of the weights while a node is warming up
REWEIGH = 0.05
_MAX_ROUTES = 4096   # lanes and method names come from callers: bound the cache


class Route:
    """Where calls to one method in one lane go, for one discovery snapshot.

    ``candidates``: the nodes (steps 1-2 above); ``idempotent``: every candidate says so;
    ``tail``: the method's latency tail when its calls may be hedged, else None; ``preferred``:
    the candidates with the preferred labels (None without ``prefer``); ``weights``: cumulative
    weights of ``candidates`` (and ``pweights`` of ``preferred``), None when all are equal;
    ``stale_at``: when the weights must be recomputed (a node is warming up)."""

    __slots__ = ("snapshot", "candidates", "idempotent", "tail", "preferred", "weights",
                 "pweights", "stale_at", "lane_miss")

    def __init__(self, snapshot: Sequence[Node], candidates: Tuple[Node, ...], idempotent: bool,
                 tail: Any, preferred: Optional[Tuple[Node, ...]], lane_miss: bool):
        self.snapshot = snapshot
        self.candidates = candidates
        self.idempotent = idempotent
        self.tail = tail
        self.preferred = preferred
        self.lane_miss = lane_miss   # nodes have the method, but none may take this call
        self.weights: Optional[List[float]] = None
        self.pweights: Optional[List[float]] = None
        self.stale_at = float("inf")


class Router:
    """Builds and caches the :class:`Route` of each method and lane for one client."""

    def __init__(self, hedging: Any = None, prefer: Optional[Dict[str, str]] = None,
                 warmup: float = 10.0):
        self.hedging = hedging
        self.prefer = dict(prefer or {})
        self.warmup = warmup
        self.prefer_fallbacks = 0   # calls that went to any node: no preferred one was usable
        self.tails: Dict[str, Any] = {}     # "Service.method" -> its latency Tail (hedge delay)
        #: method (or (method, lane)) -> its Route; the client reads it directly on the hot path
        self.routes: Dict[Any, Route] = {}
        self._seen: Dict[str, float] = {}   # address -> when first seen (0: there from the start)
        self._services: set = set()         # services whose first snapshot was seen

    def route(self, service: str, method: str, name: str, nodes: Sequence[Node],
              lane: Optional[str] = None) -> Route:
        """The route of ``method`` ("Service.method", whose bare name is ``name``) in ``lane``."""
        key = method if lane is None else (method, lane)
        route = self.routes.get(key)
        if route is None or route.snapshot is not nodes:
            route = self._build(service, method, name, nodes, lane)
            if route.candidates:   # only real methods: callers choose the method strings
                if len(self.routes) >= _MAX_ROUTES:
                    self.routes.clear()
                self.routes[key] = route
        return route

    def targets(self, route: Route, usable: Any, now: float) -> Tuple[tuple, Optional[list]]:
        """``(nodes, cumulative weights or None)`` for the next attempt of a call on ``route``."""
        if now >= route.stale_at:
            self._weigh(route, now)
        if route.preferred is None:
            return route.candidates, route.weights
        if any(usable(n) for n in route.preferred):
            return route.preferred, route.pweights
        self.prefer_fallbacks += 1
        return route.candidates, route.weights

    def known(self, method: str) -> bool:
        """True when some node of the service has ``method`` ("Service.method")."""
        return method in self.routes

    def joined(self, service: str, added: Sequence[Node]) -> None:
        """Nodes of ``service`` appeared: those that joined after its first snapshot warm up."""
        first = service not in self._services
        self._services.add(service)
        now = time.monotonic()
        for node in added:
            if node.address not in self._seen:
                self._seen[node.address] = 0.0 if first else now

    def forget(self, address: str) -> None:
        self._seen.pop(address, None)

    def _build(self, service: str, method: str, name: str, nodes: Sequence[Node],
               lane: Optional[str]) -> Route:
        now = time.monotonic()
        self.joined(service, [n for n in nodes if n.address not in self._seen])
        serving = [n for n in nodes if n.has_method(name) is not False]
        laned = [n for n in serving if lane is not None and n.label("lane") == lane]
        candidates = tuple(laned or [n for n in serving if n.label("lane") is None])
        idempotent = all(n.idempotent(name) for n in candidates)
        tail = None
        if idempotent and len(candidates) > 1 and self.hedging is not None:
            tail = self.tails.get(method) or self.tails.setdefault(method, self.hedging.tail())
        preferred = (tuple(n for n in candidates if n.matches(self.prefer))
                     if self.prefer else None)
        route = Route(nodes, candidates, idempotent, tail, preferred,
                      bool(serving) and not candidates)
        self._weigh(route, now)
        return route

    def _weigh(self, route: Route, now: float) -> None:
        stale_at = float("inf")
        weights = []
        for node in route.candidates:
            weight, warm_at = self._weight(node, now)
            weights.append(weight)
            stale_at = min(stale_at, warm_at)
        route.weights = _cumulative(weights)
        if route.preferred is not None:
            route.pweights = _cumulative([self._weight(n, now)[0] for n in route.preferred])
        route.stale_at = min(stale_at, now + REWEIGH) if stale_at != float("inf") else stale_at

    def _weight(self, node: Node, now: float) -> Tuple[float, float]:
        """``(weight now, when it stops ramping)`` (inf: it is not ramping)."""
        weight = node.weight(DEFAULT_WEIGHT)
        seen = self._seen.get(node.address, 0.0)
        if not seen or self.warmup <= 0 or now - seen >= self.warmup:
            return float(weight), float("inf")
        return weight * max(MIN_RAMP, (now - seen) / self.warmup), seen + self.warmup


def _cumulative(weights: List[float]) -> Optional[List[float]]:
    """Running sums of ``weights``; None when they are all equal (or all zero): plain P2C."""
    if not weights or max(weights) == min(weights) or max(weights) <= 0:
        return None
    total, cumulative = 0.0, []
    for w in weights:
        total += w
        cumulative.append(total)
    return cumulative
