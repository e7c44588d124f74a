"""Metrics: what a node or a gateway did, as Prometheus text for ``GET /metrics``.

Every :class:`~framework.server.Server` and :class:`~framework.gateway.Gateway` owns one
``CollectorRegistry`` (never the process-global default), so several of them in one process - tests,
or a gateway next to a node - never mix their numbers.

Counted on the call path (the dispatcher's / gateway's ``observe`` hook):

* ``framework_calls_total{service,method,outcome}`` (``expired``: skipped, its deadline had passed) and
  ``framework_call_duration_seconds{service,method}`` (histogram) - on a node;
* ``framework_gateway_calls_total{service,method,outcome}`` and
  ``framework_gateway_call_duration_seconds{service,method}`` - on a gateway. Names the gateway has
  never seen registered are counted as ``service="(unknown)"``, so hostile method strings cannot
  grow the label set;
* ``framework_client_calls_total{service,method,outcome}`` and
  ``framework_client_call_duration_seconds{service,method}`` - the logical calls of a client given
  ``Client(metrics=registry)``: a node's own client (``self.client``) and a gateway's count into
  their ``/metrics``. Only methods some node has are named; others count as "(unknown)".

Read from live state at scrape time (nothing on the call path):

* ``framework_calls_in_flight`` / ``framework_gateway_calls_in_flight``;
* ``framework_registered`` (1/0), ``framework_registration_grants_total`` (more than 1 means the
  node re-registered), ``framework_registry_failures_total``, ``framework_draining`` - nodes only;
* ``framework_discovery_nodes{service}`` and ``framework_discovery_resyncs_total{service}`` from
  the watched cache (a node's own client, or the gateway's);
* ``framework_calls_shed_total``: calls the node refused as overloaded (nodes only);
* ``framework_client_retries_total``, ``framework_client_retries_refused_total``,
  ``framework_client_ejections_total``, ``framework_client_rate_ejections_total``,
  ``framework_client_hedges_total``, ``framework_client_hedges_won_total`` and
  ``framework_client_prefer_fallbacks_total`` from that client's retries, retry budget, node
  health, hedging and routing.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any, Callable, Dict, Optional, Tuple

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import __version__
from .errors import (CommunicationError, InvalidParams, InvalidRequest, MethodNotFound, RemoteError,
                     ServiceUnavailable, Timeout, Unauthorized)

UNKNOWN = "(unknown)"

#: RPCs on loopback take well under a millisecond, so the buckets start far below the default 5 ms
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)


class _CallStats:
    """Per (service, method): calls by outcome, and latency as bucket counts plus a sum."""

    __slots__ = ("outcomes", "buckets", "total")

    def __init__(self):
        self.outcomes: Dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)   # the last one is +Inf
        self.total = 0.0


class CallMetrics:
    """Calls by service/method/outcome, a latency histogram and an in-flight gauge.

    ``observe`` runs on every call, so it only bumps plain numbers (about 1 us; prometheus-client's
    own ``Counter.inc`` + ``Histogram.observe`` cost 6-9 us, mostly locks); the Prometheus
    families are built from them at scrape time. It relies on the one OS thread of a gevent
    process: under real threads, concurrent calls could lose an increment, never corrupt one.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry, namespace: str,
                 in_flight: Optional[Callable[[], float]] = None):
        self.registry = registry
        self.namespace = namespace
        self._stats: Dict[Tuple[str, str], _CallStats] = {}
        self.in_flight = Gauge(f"{namespace}_calls_in_flight", "Calls being handled right now.",
                               registry=registry)
        if in_flight is not None:
            self.in_flight.set_function(in_flight)
        registry.register(self)

    def observe(self, service: str, method: str, outcome: str, seconds: Optional[float]) -> None:
        """One call's outcome; ``seconds`` None: it never ran (not in the latency histogram)."""
        stats = self._stats.get((service, method))
        if stats is None:
            stats = self._stats.setdefault((service, method), _CallStats())
        outcomes = stats.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if seconds is not None:
            stats.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            stats.total += seconds

    def collect(self):
        calls = CounterMetricFamily(f"{self.namespace}_calls", "Calls handled, by outcome.",
                                    labels=["service", "method", "outcome"])
        latency = HistogramMetricFamily(f"{self.namespace}_call_duration_seconds",
                                        "Time spent per call.", labels=["service", "method"])
        for (service, method), stats in sorted(self._stats.items()):
            for outcome, n in sorted(stats.outcomes.items()):
                calls.add_metric([service, method, outcome], n)
            cumulative, running = [], 0
            for bound, n in zip(LATENCY_BUCKETS + (float("inf"),), stats.buckets):
                running += n
                cumulative.append((floatToGoString(bound), running))
            latency.add_metric([service, method], cumulative, stats.total)
        yield calls
        yield latency

    def render(self) -> bytes:
        return generate_latest(self.registry)


def outcome_of(exc: Optional[BaseException]) -> str:
    """The ``outcome`` label of a call that raised ``exc`` (None: it succeeded)."""
    if exc is None:
        return "ok"
    for cls, label in ((MethodNotFound, "not_found"), (InvalidParams, "invalid_params"),
                       (InvalidRequest, "invalid_request"), (ServiceUnavailable, "unavailable"),
                       (Timeout, "timeout"), (Unauthorized, "unauthorized"),
                       (CommunicationError, "connection_lost"), (RemoteError, "error")):
        if isinstance(exc, cls):
            return label
    return "unavailable" if getattr(exc, "not_processed", False) else "error"


class _DiscoveryCollector:
    """Node counts and resyncs of a :class:`~framework.discovery.Discovery`, read at scrape time."""

    def __init__(self, discovery_of: Callable[[], Any]):
        self.discovery_of = discovery_of

    def collect(self):
        nodes = GaugeMetricFamily("framework_discovery_nodes",
                                  "Live nodes in the watched cache.", labels=["service"])
        resyncs = CounterMetricFamily("framework_discovery_resyncs",
                                      "Full re-lists of a service after a watch failure.",
                                      labels=["service"])
        discovery = self.discovery_of()
        stats = discovery.stats() if discovery is not None else {}
        for service, s in sorted(stats.items()):
            nodes.add_metric([service], s.get("nodes", 0))
            resyncs.add_metric([service], s.get("resyncs", 0))
        yield nodes
        yield resyncs


class _ClientCollector:
    """What the calling side (a node's own client, or the gateway's) did about unhealthy nodes:
    retries the budget refused, and nodes ejected for their failure rate, read at scrape time."""

    def __init__(self, client_of: Callable[[], Any]):
        self.client_of = client_of

    #: (name, help, read(client)); a counter reads 0 while there is no client (or no hedging)
    COUNTERS = (
        ("framework_client_retries", "Attempts re-sent to another node after a failure.",
         lambda c: c.retries),
        ("framework_client_retries_refused",
         "Retries the retry budget refused (the call failed instead).", lambda c: c.budget.refused),
        ("framework_client_rate_ejections",
         "Nodes ejected for failing far more often than their peers.",
         lambda c: c.health.rate_ejections),
        ("framework_client_ejections", "Nodes ejected for failures in a row or a refused connect.",
         lambda c: c.health.streak_ejections),
        ("framework_client_hedges", "Backup copies sent for slow idempotent calls.",
         lambda c: c.hedging.sent if c.hedging is not None else 0),
        ("framework_client_hedges_won", "Backup copies that answered before the first copy.",
         lambda c: c.hedging.won if c.hedging is not None else 0),
        ("framework_client_prefer_fallbacks",
         "Calls sent to any node because no node with the preferred labels was usable.",
         lambda c: c.prefer_fallbacks),
    )

    def collect(self):
        client = self.client_of()
        for name, doc, read in self.COUNTERS:
            yield CounterMetricFamily(name, doc, value=read(client) if client is not None else 0)


class _NodeCollector:
    """Registration and lifecycle state of a Server, read at scrape time."""

    #: (name, help, attribute of the Registration)
    REGISTRATION = (
        ("framework_registration_grants",
         "Leases granted; more than 1 means the node re-registered.", "grants"),
        ("framework_registration_restores", "Keys put back after they went missing from etcd.",
         "restores"),
        ("framework_registry_failures", "etcd errors met while keeping the registration alive.",
         "failures"),
    )

    def __init__(self, server: Any):
        self.server = server

    def collect(self):
        server = self.server
        reg = server.registration
        info = GaugeMetricFamily("framework_info", "Framework version and served services.",
                                 labels=["version", "services"])
        info.add_metric([__version__, ",".join(s.name for s in server.specs)], 1)
        yield info
        yield GaugeMetricFamily("framework_registered",
                                "1 while the node's keys are in etcd on a live lease.",
                                value=1 if reg is not None and reg.registered else 0)
        for name, doc, attribute in self.REGISTRATION:
            yield CounterMetricFamily(name, doc,
                                      value=getattr(reg, attribute) if reg is not None else 0)
        yield GaugeMetricFamily("framework_draining", "1 once the node began shutting down.",
                                value=1 if server.draining else 0)
        yield CounterMetricFamily("framework_calls_shed",
                                  "Calls refused as overloaded before they were queued.",
                                  value=server.shedder.shed)


def _pool_size(pool: Any) -> float:
    try:
        return float(len(pool))
    except TypeError:
        return 0.0


class NodeMetrics(CallMetrics):
    """The metrics of one :class:`~framework.server.Server`; ``observe`` is the dispatcher's hook."""

    def __init__(self, server: Any):
        super().__init__(CollectorRegistry(), "framework",
                         in_flight=lambda: _pool_size(getattr(server, "pool", None)))
        self.registry.register(_NodeCollector(server))
        self.registry.register(_DiscoveryCollector(lambda: getattr(server, "discovery", None)))


class GatewayMetrics(CallMetrics):
    """The metrics of one :class:`~framework.gateway.Gateway`."""

    def __init__(self, gateway: Any):
        self._in_flight = 0
        self._answers: Dict[int, int] = {}   # HTTP status -> answers (see CallMetrics: no lock)
        super().__init__(CollectorRegistry(), "framework_gateway",
                         in_flight=lambda: self._in_flight)
        self.registry.register(_DiscoveryCollector(lambda: gateway.client.discovery))

    def count_client(self, client: Any) -> None:
        """A client the gateway was given (it counts its calls elsewhere, if anywhere): its
        retries, ejections, hedges and fallbacks in this registry all the same."""
        self.registry.register(_ClientCollector(lambda: client))

    def started(self) -> None:
        self._in_flight += 1

    def finished(self) -> None:
        self._in_flight -= 1

    def answered(self, status: int) -> None:
        """Count one HTTP answer (the gateway's ``HttpSurface`` calls this for every response)."""
        self._answers[status] = self._answers.get(status, 0) + 1

    def collect(self):
        yield from super().collect()
        http = CounterMetricFamily("framework_gateway_http_responses",
                                   "HTTP answers, by status code.", labels=["status"])
        for status, n in sorted(self._answers.items()):
            http.add_metric([str(status)], n)
        yield http


class ClientMetrics(CallMetrics):
    """The metrics of one :class:`~framework.client.Client`, in the application's ``registry``:
    its logical calls (``observe``, from the client's call path) and, read at scrape time, its
    retries, ejections, hedges and fallbacks."""

    def __init__(self, registry: CollectorRegistry, client: Any):
        self.client = client
        super().__init__(registry, "framework_client", in_flight=self._in_flight)
        registry.register(_ClientCollector(lambda: client))

    def _in_flight(self) -> float:
        return float(sum(conn.in_flight for conn in list(self.client.pool._conns.values())))

    def observe(self, service: str, method: str, outcome: str, seconds: Optional[float]) -> None:
        # method names come from callers: only those some node serves get a label of their own
        if not self.client.router.known(f"{service}.{method}"):
            service = method = UNKNOWN
        super().observe(service, method, outcome, seconds)

