"""Calls by name: ``client.HelloService.Hello("x")`` -> pick a live node -> send -> retry if safe.

Retry rules (the caller's deadline bounds all of them):

* the call never reached a node (connect refused, connection already dead, node said "going away"
  or "overloaded") -> always re-sent to another node;
* the call may have reached a node that then failed (connection lost after the write) -> re-sent
  only if every node advertises the method as ``@idempotent``; otherwise :class:`ConnectionLost`;
* the node answered (a result or an application error) -> returned/raised as is, never re-sent;
* the deadline passed -> :class:`Timeout`.

An idempotent call that is slow to answer is also sent to a second node, and the first answer wins
(:mod:`framework.hedging`). Retries and hedges together are capped by the retry budget
(:mod:`framework.budget`).

Nodes that fail repeatedly, or refuse connections, are ejected for a growing backoff and taken back
after one success; a node that leaves the registry is forgotten. Which nodes a call may go to -
its lane, preferred labels, weights - is :mod:`framework.routing`'s business.

Around those attempts is the logical call (:meth:`Client._logical`): its deadline (the call's
timeout, a per-method default, and inside a handler no later than the handler's own deadline), its
metadata and trace context (:mod:`framework.calls`, :mod:`framework.tracing`) and the client's
interceptors. A client with none of these, called outside a handler, goes straight to the attempts.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import calls
from . import tracing as tracing_module
from .balancer import P2C
from .budget import RetryBudget
from .discovery import DEFAULT_PREFIX, Discovery
from .record import Node
from .errors import MethodNotFound, NotSent, RpcError, ServiceUnavailable, Timeout
from .etcd import EtcdAPI, EtcdConfig
from .health import ANSWERED, RETRY, Health
from .hedging import HedgeDue, Hedging
from .metrics import ClientMetrics, outcome_of
from .pool import Pool
from .proxy import ServiceProxy
from .racing import race
from .routing import Router

log = logging.getLogger(__name__)



class Client:
    """Calls services by name through a watched cache of their live nodes.

    ``etcd``: "host:port", "h1:p1,h2:p2", a list, or an :class:`~framework.EtcdConfig` (TLS, auth);
    endpoints given as strings take TLS/auth settings from ``$ETCD_CA`` etc. ``timeout``: the
    per-call deadline in seconds.
    Pass ``discovery=`` to share another client's (or a server's) cache and watches. A client is safe
    to use from many threads or greenlets, and is a context manager.
    """

    def __init__(self, etcd: Union[None, str, Sequence[str], EtcdConfig] = None, timeout: float = 5.0,
                 prefix: str = DEFAULT_PREFIX, *, discovery: Optional[Discovery] = None,
                 pool: Optional[Pool] = None, token: Optional[str] = None, tls: Any = None,
                 etcd_client: Optional[EtcdAPI] = None, balancer: Optional[Callable[[], Any]] = None,
                 retry_budget: Optional[RetryBudget] = None,
                 hedging: Union[None, bool, Hedging] = None,
                 prefer: Optional[Dict[str, str]] = None, lane: Optional[str] = None,
                 interceptors: Sequence[calls.Interceptor] = (),
                 timeouts: Optional[Dict[str, float]] = None, warmup: float = 10.0,
                 tracing: Union[None, bool, tracing_module.Tracing] = None, metrics: Any = None):
        self.timeout = timeout
        #: per-method default timeouts: {"Service.method": s, "Service.*": s}
        self.timeouts = dict(timeouts or {})
        #: builds one policy per service (framework.balancer): P2C by default - `make bench` shows it
        #: no slower than RoundRobin on equal nodes and far better when one node is slow
        self.balancer = balancer or P2C
        self.token = token
        self._meta = {"token": token} if token is not None else None   # meta of a plain call
        self._owns_discovery = discovery is None
        self._owned_etcd = None   # an etcd client this Client made, closed with it
        if discovery is None:
            if etcd_client is None:
                etcd_client = self._owned_etcd = EtcdConfig.coerce(etcd).client()
            discovery = Discovery(etcd_client, prefix)
        self.discovery = discovery
        self._owns_pool = pool is None
        # tls: an ssl.SSLContext or a CA bundle path, to verify nodes whose RPC port is TLS
        self.pool = pool or Pool(tls=tls)
        #: which nodes the balancer may pick: ejection of failing nodes, and stalls the pool saw
        self.health = Health(self.pool.stalled)
        #: retries and hedges add at most 10% of the answered calls plus 10/s (framework.budget)
        self.budget = retry_budget or RetryBudget()
        self.retries = 0   # attempts re-sent after a failure
        #: slow idempotent calls get a backup on another node (framework.hedging); False: never
        self.hedging = None if hedging is False else (
            Hedging() if hedging is None or hedging is True else hedging)
        #: lanes, preferred labels ({"zone": "eu-1"}), weights and slow start (framework.routing)
        self.router = Router(self.hedging, prefer, warmup)
        self.lane = lane
        self.interceptors = list(interceptors)
        self._proceed = calls.chain(self.interceptors, self._send)
        self.tracing = tracing if isinstance(tracing, tracing_module.Tracing) else \
            tracing_module.Tracing(tracing is not False)
        #: calls by service, method and outcome, in a prometheus_client registry (None: not kept)
        self.metrics = ClientMetrics(metrics, self) if metrics is not None else None
        self._plain = not (self.interceptors or lane)
        self._balancers: Dict[str, Any] = {}
        discovery.subscribe(self._on_change)

    # ---- the public surface ----------------------------------------------------------------------

    def __getattr__(self, name: str) -> "ServiceProxy":
        if name.startswith("_"):
            raise AttributeError(name)
        # cached as a plain attribute: no __getattr__ call per use (a name that reached __getattr__
        # is no attribute of the class, so nothing is shadowed); setdefault keeps one per name
        return self.__dict__.setdefault(name, ServiceProxy(self, name))

    def nodes(self, service: str) -> List[str]:
        """Addresses of the live nodes of ``service``, from the watched cache."""
        return [n.address for n in self.discovery.nodes(service, wait=self.timeout)]

    def call(self, method: str, params: Union[list, tuple, dict, None] = None,
             timeout: Optional[float] = None, metadata: Optional[Dict[str, str]] = None) -> Any:
        """Call ``"Service.method"`` with positional (list or tuple) or named (dict) params.
        ``metadata``: strings sent with the call (:mod:`framework.calls` bounds them)."""
        service, _, name = method.rpartition(".")
        if not service or not name:
            raise MethodNotFound(f"method must be 'Service.method', got {method!r}")
        if params is None:
            params = ()   # a tuple packs as the same msgpack array as a list
        return self._call(service, name, method, params, timeout, metadata)

    @property
    def prefer(self) -> Dict[str, str]:
        return self.router.prefer

    @property
    def prefer_fallbacks(self) -> int:
        """Calls that went to any node because no node with the ``prefer`` labels was usable."""
        return self.router.prefer_fallbacks

    def close(self) -> None:
        self.discovery.unsubscribe(self._on_change)
        if self._owns_pool:
            self.pool.close()
        if self._owns_discovery:
            self.discovery.close()
        if self._owned_etcd is not None:
            self._owned_etcd.close()   # its idle keep-alive connections

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the call path ---------------------------------------------------------------------------

    def usable(self, node: Node) -> bool:
        """True when the balancer may pick ``node`` now (not ejected, not stalled)."""
        return self.health.usable(node.address, time.monotonic())

    def _on_change(self, service: str, added, removed, snapshot) -> None:
        live = {n.address for n in snapshot}
        balancer = self._balancers.get(service)
        self.router.joined(service, added)
        for node in removed:
            if node.address not in live:
                self.pool.forget(node.address)
                self.health.forget(node.address)
                self.router.forget(node.address)
                if balancer is not None:
                    balancer.forget(node)

    def _timeout(self, method: str) -> float:
        """The default timeout of ``method``: ``timeouts["S.m"]``, ``["S.*"]``, else ``timeout``."""
        found = self.timeouts.get(method)
        if found is None:
            found = self.timeouts.get(method.rpartition(".")[0] + ".*")
        return self.timeout if found is None else found

    def _call(self, service: str, name: str, method: str, params: Any,
              timeout: Optional[float] = None, metadata: Optional[Dict[str, str]] = None) -> Any:
        if timeout is None:
            timeout = self._timeout(method) if self.timeouts else self.timeout
        now = time.monotonic()
        if (calls.current() is None and metadata is None and self._plain
                and (not self.tracing.enabled or self.tracing.tracer(now) is None)):
            if self.metrics is not None:   # nothing around the attempts but their count
                return _counted(self, service, name, method, params, now, timeout)
            return self._attempts(service, name, method, params, now + timeout, timeout,
                                  self._meta, None, None, now)
        return self._logical(service, name, method, params, timeout, metadata,
                             calls.current_call())

    def _logical(self, service: str, name: str, method: str, params: Any, timeout: float,
                 metadata: Optional[Dict[str, str]], parent: Optional[calls.Call]) -> Any:
        """The call with its deadline, metadata, span, interceptors and metrics."""
        call, started = self._begin(service, name, params, timeout, metadata, parent)
        error: Optional[BaseException] = None
        try:
            return self._proceed(call)
        except BaseException as exc:   # an interceptor's own exception too
            error = exc
            raise
        finally:
            self._finish(service, name, call, started, error)

    def _begin(self, service: str, name: str, params: Any, timeout: float,
               metadata: Optional[Dict[str, str]],
               parent: Optional[calls.Call]) -> Tuple[calls.Call, float]:
        """A logical call's :class:`~framework.calls.Call` (its deadline, metadata, span and lane)
        and when it started; :meth:`_finish` ends it (also :mod:`framework.aio`'s)."""
        started = time.monotonic()
        deadline = started + timeout
        md = dict(metadata) if metadata else {}   # checked once, as sent (_send)
        tracer = self.tracing.tracer(started) if self.tracing.enabled else None
        if parent is not None:   # a handler's call: no later than the handler's own deadline
            parent_deadline, context = calls.inherited(parent)
            deadline = min(deadline, parent_deadline)
            if tracer is None:   # else the node's SERVER span is the current context
                for key, value in context.items():
                    md.setdefault(key, value)
        call = calls.Call(service, name, params, md, deadline)
        if tracer is not None:
            call.span = self.tracing.client_span(tracer, service, name, md)
        if self.lane is not None:
            md["baggage"] = calls.baggage_set(md.get("baggage"), "lane", self.lane)
        return call, started

    def _finish(self, service: str, name: str, call: calls.Call, started: float,
                error: Optional[BaseException]) -> None:
        """A logical call ended, with ``error`` (None: it succeeded): its span and metrics."""
        if call.span is not None:
            tracing_module.end(call.span, error)
        if self.metrics is not None:
            self.metrics.observe(service, name, outcome_of(error), time.monotonic() - started)

    def _send(self, call: calls.Call) -> Any:
        """The innermost ``proceed``: the attempts of ``call`` as the interceptors left it."""
        meta, lane = self._wire_meta(call.metadata)
        now = time.monotonic()
        return self._attempts(call.service, call.method, f"{call.service}.{call.method}",
                              call.params, call.deadline, call.deadline - now, meta, lane,
                              call.span, now)

    def _wire_meta(self, md: Dict[str, str]) -> Tuple[Optional[dict], Optional[str]]:
        """The request's ``meta`` for a call with metadata ``md`` (checked here, once, as it is
        sent), and the lane its baggage names."""
        meta = self._meta
        lane = None
        if md:
            calls.check_metadata(md)
            meta = {**(meta or {}), "metadata": md}
            lane = calls.baggage_get(md.get("baggage"), "lane")
        return meta, lane

    def _attempts(self, service: str, name: str, method: str, params: Any, deadline: float,
                  timeout: float, meta: Optional[dict], lane: Optional[str], span: Any,
                  now: float) -> Any:
        discovery, pool, router, routes = self.discovery, self.pool, self.router, self.router.routes
        balancer = self._balancers.get(service) or self._new_balancer(service)
        tried, last_error, pause = None, None, 0.005   # failed nodes, their error, the next pause
        while True:
            remaining = deadline - now
            if remaining <= 0:
                _expired(discovery, service, method, timeout, last_error)
            nodes = discovery.nodes(service, wait=remaining)
            route = routes.get(method if lane is None else (method, lane))
            if route is None or route.snapshot is not nodes:
                route = router.route(service, method, name, nodes, lane)
            candidates, weights = route.candidates, route.weights
            if route.preferred is not None or now >= route.stale_at:
                candidates, weights = router.targets(route, self.usable, now)
            if not candidates:
                _no_candidates(discovery, service, method, nodes, route.lane_miss, lane)
                now = time.monotonic()
                continue  # first list not done yet; loop until it is or the deadline passes
            fresh = ([n for n in candidates if n.address not in tried] or candidates
                     if tried else candidates)
            node = fresh[0] if len(fresh) == 1 else (   # one node: what pick would return
                balancer.pick(fresh, self.usable, weights if fresh is candidates else None)
                or balancer.pick(fresh))   # when every node is ejected, try one anyway
            if span is not None:
                tracing_module.Tracing.attempt(span, node.address)
            hedge_at = 0.0 if route.tail is None else route.tail.hedge_at(now, remaining)
            load, ok, conn = balancer.begin(node), False, None
            try:
                conn = pool.get(node.address, remaining, node.meta.get("workers", 1))
                result = conn.call(method, params, remaining, meta, pool.stall_after,
                                   route.idempotent, deadline, hedge_at)
                ok = True
            except HedgeDue as due:
                ok, result = race(self, due, node, route, method, params, deadline, balancer,
                                  now, meta, span)
                if ok is not None:
                    return result
                last_error = result
            except RpcError as exc:
                verdict = self.health.judge(node.address, exc, conn, route.idempotent, now)
                ok = verdict is ANSWERED   # for balancing, an answer is a success
                if verdict is not RETRY:
                    raise
                last_error = _telling(last_error, exc, deadline)
            else:
                self.health.record(node.address, True, False, now)
                return result
            finally:
                ended = time.monotonic()
                balancer.end(load, ended - now, bool(ok), ended)
                if ok:   # the node answered: it earns the budget its share of a retry
                    self.budget.calls += 1
                    if route.tail is not None:
                        route.tail.add(ended - now, ended)
            tried, pause = self._before_retry(tried, node.address, len(candidates), pause,
                                              deadline, last_error)
            now = time.monotonic()

    def _before_retry(self, tried: Optional[set], address: str, candidates: int, pause: float,
                      deadline: float, last_error: Optional[RpcError]) -> Tuple[set, float]:
        """``address`` failed this call with ``last_error``, which allows a retry (see
        :meth:`_retry`); once every node has failed, sleep ``pause`` (so a dead registry entry
        can expire) and start over. Returns the nodes tried and the next pause."""
        tried, wait = self._retry(tried, address, candidates, pause, deadline, last_error)
        if wait is None:
            return tried, pause
        time.sleep(wait)
        return tried, min(pause * 2, 0.2)

    def _retry(self, tried: Optional[set], address: str, candidates: int, pause: float,
               deadline: float, last_error: Optional[RpcError]) -> Tuple[set, Optional[float]]:
        """Take a retry from the retry budget (or raise) and note ``address`` as tried. Returns
        the nodes tried and how long to pause first: None while some node is untried, else
        ``pause`` (bounded by the deadline) with ``tried`` emptied for the next round.
        A call that never left this process (NotSent: no node saw it) is re-sent free, as gRPC's
        transparent retries are: it adds no load anywhere."""
        if not isinstance(last_error, NotSent) and not self.budget.withdraw(time.monotonic()):
            raise ServiceUnavailable(f"retry budget exhausted (last error: {last_error})") \
                from last_error
        self.retries += 1
        tried = set() if tried is None else tried
        tried.add(address)
        if len(tried) < candidates:
            return tried, None
        tried.clear()
        return tried, min(pause, max(0.0, deadline - time.monotonic()))

    def _new_balancer(self, service: str) -> Any:
        return self._balancers.setdefault(service, self.balancer())


def _counted(client: Client, service: str, name: str, method: str, params: Any, now: float,
             timeout: float) -> Any:
    """A plain call's attempts, counted in ``client.metrics`` (the gateway's client, say)."""
    try:
        result = client._attempts(service, name, method, params, now + timeout, timeout,
                                  client._meta, None, None, now)
    except BaseException as exc:
        client.metrics.observe(service, name, outcome_of(exc), time.monotonic() - now)
        raise
    client.metrics.observe(service, name, "ok", time.monotonic() - now)
    return result


def _telling(last_error: Optional[RpcError], error: RpcError, deadline: float) -> RpcError:
    """What a failed call reports as its last error once ``error`` ends an attempt: ``error``,
    unless the deadline cut that attempt short (a connect it ended, say) after an earlier one had
    failed in its own right: a certificate that failed to verify says more than "timed out"."""
    return error if last_error is None or time.monotonic() < deadline else last_error


def _expired(discovery: Discovery, service: str, method: str, timeout: float,
             last_error: Optional[RpcError]) -> None:
    """The deadline passed: raise what the caller should see."""
    if last_error is not None and not isinstance(last_error, Timeout):
        raise ServiceUnavailable(f"{method}: no node answered before the deadline "
                                 f"(last error: {last_error})") from last_error
    if not discovery.ready(service):
        raise ServiceUnavailable(f"{method}: the registry could not be read before "
                                 f"the deadline ({timeout:.3f}s)")
    raise Timeout(f"{method}: deadline of {timeout:.3f}s passed") from last_error


def _no_candidates(discovery: Discovery, service: str, method: str, nodes: Sequence[Node],
                   lane_miss: bool, lane: Optional[str]) -> None:
    """No node can take the call: raise, unless the service's first list is still pending."""
    if lane_miss:
        raise ServiceUnavailable(f"{method}: no node of {service} takes calls in "
                                 + (f"lane {lane!r} or the baseline" if lane else "no lane")
                                 + " (every node has a lane label)")
    if nodes:
        raise MethodNotFound(f"Method not found: {method} (no node of {service} has it)")
    if discovery.ready(service):
        raise ServiceUnavailable(f"no live node of {service}")
