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
after one success; a node that leaves the registry is forgotten.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .balancer import P2C
from .budget import RetryBudget
from .discovery import DEFAULT_PREFIX, Discovery
from .record import Node
from .errors import (ConnectionLost, InternalError, MethodNotFound, NotSent, Overloaded, RpcError,
                     ServiceUnavailable, Timeout, from_error_object)
from .etcd import EtcdAPI, EtcdConfig
from .health import Health
from .hedging import Answers, HedgeDue, Hedging
from .pool import Pool
from .proxy import ServiceProxy

log = logging.getLogger(__name__)

#: errors a node answers with that count against its health: the framework failed on it (-32603),
#: or it refused the call as overloaded (a node going away is draining, not failing)
_NODE_FAILURES = (InternalError, Overloaded)
# what an attempt's failure means for the call (see _judge)
_RETRY, _ANSWERED, _LOST = "retry", "answered", "lost"


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
                 prefer: Optional[Dict[str, str]] = None):
        self.timeout = timeout
        #: builds one policy per service (framework.balancer): P2C by default - `make bench` shows it
        #: no slower than RoundRobin on equal nodes and far better when one node is slow
        self.balancer = balancer or P2C
        self.token = token
        self._owns_discovery = discovery is None
        if discovery is None:
            etcd_client = etcd_client or EtcdConfig.coerce(etcd).client()
            discovery = Discovery(etcd_client, prefix)
        self.discovery = discovery
        self._owns_pool = pool is None
        # tls: an ssl.SSLContext or a CA bundle path, to verify nodes whose RPC port is TLS
        self.pool = pool or Pool(tls=tls)
        #: which nodes the balancer may pick: ejection of failing nodes, and stalls the pool saw
        self.health = Health(self.pool.stalled)
        #: retries and hedges add at most 10% of the answered calls plus 10 a second
        #: (framework.budget)
        self.budget = retry_budget or RetryBudget()
        #: slow idempotent calls get a backup on another node (framework.hedging); False: never
        self.hedging = None if hedging is False else (
            Hedging() if hedging is None or hedging is True else hedging)
        self._tails: Dict[str, Any] = {}   # "Service.method" -> its latency Tail (hedge delay)
        #: labels to keep calls to (e.g. {"zone": "eu-1"}) while a node that has them is usable
        self.prefer = dict(prefer or {})
        self.prefer_fallbacks = 0   # calls that went to any node: no preferred one was usable
        self._balancers: Dict[str, Any] = {}
        # "Service.method" -> (snapshot, candidates, idempotent): recomputed only when the
        # discovery snapshot changes, so a call does no per-node work
        self._routes: Dict[str, tuple] = {}
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
             timeout: Optional[float] = None) -> Any:
        """Call ``"Service.method"`` with positional (list or tuple) or named (dict) params."""
        service, _, name = method.rpartition(".")
        if not service or not name:
            raise MethodNotFound(f"method must be 'Service.method', got {method!r}")
        if params is None:
            params = ()   # a tuple packs as the same msgpack array as a list
        return self._call(service, name, method, params, self.timeout if timeout is None else timeout)

    def close(self) -> None:
        self.discovery.unsubscribe(self._on_change)
        if self._owns_pool:
            self.pool.close()
        if self._owns_discovery:
            self.discovery.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the call path ---------------------------------------------------------------------------

    def _usable(self, node: Node) -> bool:
        return self.health.usable(node.address, time.monotonic())

    def _route(self, method: str, name: str, nodes: Sequence[Node]) -> tuple:
        """``(snapshot, candidates, idempotent, tail, preferred)``: ``tail`` is None when calls to
        ``method`` are never hedged (not idempotent everywhere, a single node, or hedging off);
        ``preferred``: the candidates with the ``prefer`` labels (None without ``prefer``)."""
        candidates = tuple(n for n in nodes if n.has_method(name) is not False)
        idempotent = _idempotent(candidates, name)
        tail = None
        if idempotent and len(candidates) > 1 and self.hedging is not None:
            tail = self._tails.get(method) or self._tails.setdefault(method, self.hedging.tail())
        preferred = tuple(n for n in candidates if n.matches(self.prefer)) if self.prefer else None
        route = (nodes, candidates, idempotent, tail, preferred)
        if candidates:   # only real methods: a gateway's callers choose the method strings
            self._routes[method] = route
        return route

    def _preferred(self, preferred: tuple, candidates: tuple) -> tuple:
        """The preferred nodes while one of them is usable; else every candidate (counted)."""
        now = time.monotonic()
        if any(self.health.usable(n.address, now) for n in preferred):
            return preferred
        self.prefer_fallbacks += 1
        return candidates

    def _on_change(self, service: str, added, removed, snapshot) -> None:
        live = {n.address for n in snapshot}
        balancer = self._balancers.get(service)
        for node in removed:
            if node.address not in live:
                self.pool.forget(node.address)
                self.health.forget(node.address)
                if balancer is not None:
                    balancer.forget(node)

    def _call(self, service: str, name: str, method: str, params: Any, timeout: float) -> Any:
        now = time.monotonic()
        deadline = now + timeout
        discovery, pool = self.discovery, self.pool
        balancer = self._balancers.get(service) or self._new_balancer(service)
        tried, last_error, pause = None, None, 0.005   # failed nodes, their error, the next pause
        while True:
            remaining = deadline - now
            if remaining <= 0:
                _expired(discovery, service, method, timeout, last_error)
            nodes = discovery.nodes(service, wait=remaining)
            route = self._routes.get(method)
            if route is None or route[0] is not nodes:
                route = self._route(method, name, nodes)
            candidates, idempotent, tail = route[1], route[2], route[3]
            if route[4] is not None:
                candidates = self._preferred(route[4], candidates)
            if not candidates:
                _no_candidates(discovery, service, method, nodes)
                now = time.monotonic()
                continue  # first list not done yet; loop until it is or the deadline passes
            fresh = ([n for n in candidates if n.address not in tried] or candidates
                     if tried else candidates)
            if len(fresh) == 1:
                node = fresh[0]  # what pick returns for one node, usable or not
            else:  # when every node is ejected, try one anyway
                node = balancer.pick(fresh, self._usable) or balancer.pick(fresh)
            hedge_at = tail.hedge_at(now, remaining) if tail is not None else 0.0
            load, ok, conn = balancer.begin(node), False, None
            try:
                conn = pool.get(node.address, remaining)
                result = conn.call(method, params, remaining, self.token, pool.stall_after,
                                   idempotent, deadline, hedge_at)
                ok = True
            except HedgeDue as due:
                ok, result = self._race(due, node, route, method, params, deadline, balancer, now)
                if ok is not None:
                    return result
                last_error = result
            except RpcError as exc:
                verdict = _judge(self.health, node.address, exc, conn, idempotent, now)
                ok = verdict is _ANSWERED   # for balancing, an answer is a success
                if verdict is not _RETRY:
                    raise
                last_error = exc
            else:
                self.health.record(node.address, True, False, now)
                return result
            finally:
                ended = time.monotonic()
                balancer.end(load, ended - now, bool(ok), ended)
                if ok:   # the node answered: it earns the budget its share of a retry
                    self.budget.calls += 1
                    if tail is not None:
                        tail.add(ended - now, ended)
            tried, pause = self._before_retry(tried, node.address, len(candidates), pause,
                                              deadline, last_error)
            now = time.monotonic()

    def _race(self, due: HedgeDue, node: Node, route: tuple, method: str, params: Any,
              deadline: float, balancer: Any, started: float) -> Tuple[Optional[bool], Any]:
        """``node`` has not answered ``method`` by its hedge time: send a backup to another node
        and take the first answer. Returns ``(True, result)`` when ``node`` answered first,
        ``(False, result)`` when the backup did, ``(None, error)`` when both failed in a way that
        allows a retry; raises what the caller should see otherwise."""
        others = [n for n in route[1] if n is not node]
        # as for a first attempt: when no other node is usable, a guess beats waiting it out
        other = balancer.pick(others, self._usable) or balancer.pick(others)
        now = time.monotonic()
        # a hedge away from a node already known to be failing (ejected, or silent to a ping)
        # replaces a lost call, it adds no load: only a hedge away from a healthy node is paid for
        if other is None or (self._usable(node) and not self.budget.withdraw(now, hedge=True)):
            try:   # no backup: wait on for the first node
                return True, due.conn.resume(due, deadline)
            except RpcError as exc:
                if _judge(self.health, node.address, exc, due.conn, True, now) is not _RETRY:
                    raise
                return None, exc
        answers = Answers(due.conn.green)
        due.conn.follow(due, answers.slot(0))
        attempts = {0: (node, due.conn, due.rid, None)}
        backup = self._backup(answers, other, method, params, deadline, balancer)
        if backup is not None:
            attempts[1] = backup
        error: Optional[RpcError] = None
        try:
            while attempts:
                got = answers.wait(deadline - time.monotonic())
                if got is None:   # threaded world: nothing delivers a Timeout, the wait ends
                    raise Timeout(f"{method}: deadline passed")
                tag, value = got
                attempt = attempts.pop(tag, None)
                if attempt is None:
                    continue   # a second copy of an answer
                anode, conn, _, load = attempt
                now = time.monotonic()
                if load is not None:
                    balancer.end(load, now - started, type(value) is dict, now)
                if type(value) is dict and "error" not in value:
                    self.health.record(anode.address, True, False, now)
                    if tag:   # (the caller records a primary's answer)
                        route[3].add(now - started, now)
                        self.budget.calls += 1
                        self._primary_lost(node, due.conn, now)
                    return tag == 0, value.get("result")
                exc = value if isinstance(value, RpcError) else from_error_object(value["error"])
                if _judge(self.health, anode.address, exc, conn, True, now) is not _RETRY:
                    raise exc
                error = exc
            return None, error
        finally:
            for _, conn, rid, load in attempts.values():   # the losers
                conn.cancel(rid)
                if load is not None:
                    balancer.end(load, time.monotonic() - started, True)

    def _backup(self, answers: Answers, other: Node, method: str, params: Any, deadline: float,
                balancer: Any) -> Optional[tuple]:
        """Send the hedge to ``other``; None when it could not be sent."""
        now = time.monotonic()
        load = balancer.begin(other)
        try:
            conn = self.pool.get(other.address, deadline - now)
            rid = conn.start(method, params, deadline - now, self.token, deadline,
                             self.pool.stall_after, answers.slot(1))
        except NotSent:
            self.health.record(other.address, False, True, now)
            balancer.end(load, 0.0, False, now)
            return None
        self.hedging.sent += 1
        return other, conn, rid, load

    def _primary_lost(self, node: Node, conn: Any, now: float) -> None:
        """The backup answered first: ``node`` was slow this time, a failure for its health (three
        in a row eject it for a while); a ping tells whether it is frozen."""
        self.hedging.won += 1
        self.health.record(node.address, False, False, now)
        conn.probe()

    def _before_retry(self, tried: Optional[set], address: str, candidates: int, pause: float,
                      deadline: float, last_error: Optional[RpcError]) -> Tuple[set, float]:
        """``address`` failed this call with ``last_error``, which allows a retry: take it from the
        retry budget (or raise), and once every node has failed, sleep ``pause`` (so a dead
        registry entry can expire) and start over. Returns the nodes tried and the next pause.
        A call that never left this process (NotSent: no node saw it) is re-sent free, as gRPC's
        transparent retries are: it adds no load anywhere."""
        if not isinstance(last_error, NotSent) and not self.budget.withdraw(time.monotonic()):
            raise ServiceUnavailable(f"retry budget exhausted (last error: {last_error})") \
                from last_error
        tried = set() if tried is None else tried
        tried.add(address)
        if len(tried) < candidates:
            return tried, pause
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        tried.clear()
        return tried, min(pause * 2, 0.2)

    def _new_balancer(self, service: str) -> Any:
        return self._balancers.setdefault(service, self.balancer())


def _judge(health: Health, address: str, exc: RpcError, conn: Any, idempotent: bool,
           now: float) -> str:
    """An attempt on ``address`` failed with ``exc``: record it in the node's health, and say what
    it means for the call - ``_RETRY`` (re-send it elsewhere), ``_ANSWERED`` (the node answered
    with an error: raise it) or ``_LOST`` (raise it)."""
    if isinstance(exc, NotSent):
        health.record(address, False, True, now)
        return _RETRY
    if isinstance(exc, ConnectionLost):
        # a dead connection ejects at once; a stalled node is skipped until it answers
        health.record(address, False, conn is not None and not conn.alive, now)
        return _RETRY if idempotent else _LOST
    if isinstance(exc, Timeout):
        health.record(address, False, False, now)
        return _LOST
    # a handler's error is an answer; _NODE_FAILURES are the node's own failures (a node that
    # refuses as overloaded is alive: no streak)
    health.record(address, type(exc) not in _NODE_FAILURES, False, now, type(exc) is not Overloaded)
    return _RETRY if exc.not_processed else _ANSWERED  # going away / overloaded: not run


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


def _no_candidates(discovery: Discovery, service: str, method: str,
                   nodes: Sequence[Node]) -> None:
    """No node can take the call: raise, unless the service's first list is still pending."""
    if nodes:
        raise MethodNotFound(f"Method not found: {method} (no node of {service} has it)")
    if discovery.ready(service):
        raise ServiceUnavailable(f"no live node of {service}")


def _idempotent(nodes: Sequence[Node], method: str) -> bool:
    return all(n.idempotent(method) for n in nodes)
