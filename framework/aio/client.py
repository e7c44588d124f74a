"""Calls by name from asyncio: ``await client.HelloService.Hello("x")`` -> pick a live node ->
send on the loop -> retry if safe.

This is :class:`framework.Client` with its attempts on the event loop. Everything that decides -
deadlines and per-method timeouts, metadata and trace context, routing (lanes, preferred labels,
weights, slow start), the balancer, ejection and stalls, the retry budget, hedging - is the
synchronous client's own code and state; only the waiting is asynchronous:

* the first list of a service runs in the loop's thread-pool executor, once per service however
  many tasks wait for it; after that :class:`~framework.discovery.Discovery` keeps the cache
  current on its own thread, and node changes reach the pool and the router on the loop
  (``call_soon_threadsafe``);
* calls go over :class:`~framework.aio.pool.AioPool` connections (one per node, multiplexed);
* interceptors are ``async def interceptor(call, proceed)``, awaiting ``proceed(call)``;
* cancelling the task that awaits a call cancels the call: its frame is dropped if it was still
  queued, else the node may have run it, and the ``CancelledError`` is raised ``from`` a
  :class:`~framework.errors.ConnectionLost` saying so (``from`` a NotSent when it was not sent).
"""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import calls
from .. import client as sync
from ..discovery import DEFAULT_PREFIX
from ..errors import ConnectionLost, NotSent, RpcError
from ..health import ANSWERED, RETRY
from ..hedging import HedgeDue
from ..record import Node
from ..tracing import Tracing
from .pool import AioPool
from .racing import race


class Client(sync.Client):
    """Calls services by name from coroutines on one event loop, through a watched cache of their
    live nodes. Takes the options of :class:`framework.Client` (``etcd``, ``timeout``, ``prefix``,
    ``token``, ``tls``, ``discovery``, ``balancer``, ``retry_budget``, ``hedging``, ``prefer``,
    ``lane``, ``timeouts``, ``warmup``, ``tracing``, ``metrics``); ``interceptors`` are coroutine
    functions; ``pool``: an :class:`~framework.aio.pool.AioPool` to share. Use it as
    ``async with Client(...) as client`` (or ``await client.aclose()``); ``client.call(...)``
    and ``client.Service.method(...)`` return awaitables.
    """

    def __init__(self, etcd: Any = None, timeout: float = 5.0, prefix: str = DEFAULT_PREFIX, *,
                 pool: Optional[AioPool] = None, tls: Any = None,
                 interceptors: Sequence[calls.Interceptor] = (), **options: Any):
        for interceptor in interceptors:
            if not (inspect.iscoroutinefunction(interceptor) or
                    inspect.iscoroutinefunction(getattr(interceptor, "__call__", None))):
                raise TypeError(f"interceptor {interceptor!r}: framework.aio takes "
                                f"'async def interceptor(call, proceed)'")
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._listed: set = set()         # services whose first list is in
        self._listing: Dict[str, asyncio.Future] = {}   # first lists under way, by service
        super().__init__(etcd, timeout, prefix, pool=pool or AioPool(tls=tls),
                         interceptors=interceptors, **options)
        self._owns_pool = pool is None

    # ---- the public surface (besides Client.call and the proxies, which return awaitables) ------

    def nodes(self, service: str) -> List[str]:
        """Addresses of the live nodes of ``service``, from the watched cache, without waiting:
        empty until its first list is in (:meth:`listed` waits for that)."""
        return [n.address for n in self.discovery.nodes(service)]

    async def listed(self, service: str, timeout: Optional[float] = None) -> List[str]:
        """:meth:`nodes` once ``service``'s first list is in (waited for off the loop, at most
        ``timeout`` seconds, default the client's)."""
        if service not in self._listed:
            await self._first_list(service, self.timeout if timeout is None else timeout)
        return self.nodes(service)

    async def aclose(self) -> None:
        """Close the connections, then (off the loop) the watches and the etcd client."""
        self.discovery.unsubscribe(self._on_change)
        if self._owns_pool:
            self.pool.close()
        await asyncio.get_running_loop().run_in_executor(None, super().close)

    async def __aenter__(self) -> "Client":
        self._bind()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ---- discovery, off the loop ----------------------------------------------------------------

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a framework.aio.Client is used from the event loop it first ran on")

    def _on_change(self, service: str, added, removed, snapshot) -> None:
        """Discovery's listener, called on its watch thread: the pool and the router are the
        loop's, so the change is applied there."""
        loop = self._loop
        if loop is None:   # no call has run yet: no connection to retire
            super()._on_change(service, added, removed, snapshot)
            return
        try:
            loop.call_soon_threadsafe(super()._on_change, service, added, removed, snapshot)
        except RuntimeError:   # the loop is closed: nothing of this client runs any more
            pass

    async def _first_list(self, service: str, remaining: float) -> None:
        """Wait, at most ``remaining`` seconds, for ``service``'s first list: a blocking wait in
        the executor, shared by every task that needs it."""
        self._bind()
        listing = self._listing.get(service)
        if listing is None:
            listing = self._loop.run_in_executor(None, self.discovery.nodes, service, remaining)
            self._listing[service] = listing
            listing.add_done_callback(lambda done: self._listed_done(service, done))
        try:
            await asyncio.wait_for(asyncio.shield(listing), remaining)
        except asyncio.TimeoutError:
            return
        if self.discovery.ready(service):
            self._listed.add(service)

    def _listed_done(self, service: str, listing: asyncio.Future) -> None:
        self._listing.pop(service, None)
        if not listing.cancelled():
            listing.exception()   # raised to its waiters; with none left, not worth a warning

    # ---- the call path --------------------------------------------------------------------------

    async def _logical(self, service: str, name: str, method: str, params: Any, timeout: float,
                       metadata: Optional[Dict[str, str]], parent: Optional[calls.Call]) -> Any:
        """The call with its deadline, metadata, span, interceptors and metrics."""
        call, started = self._begin(service, name, params, timeout, metadata, parent)
        error: Optional[BaseException] = None
        try:
            return await self._proceed(call)
        except BaseException as exc:   # an interceptor's own exception too
            error = exc
            raise
        finally:
            self._finish(service, name, call, started, error)

    async def _send(self, call: calls.Call) -> Any:
        """The innermost ``proceed``: the attempts of ``call`` as the interceptors left it."""
        meta, lane = self._wire_meta(call.metadata)
        now = time.monotonic()
        return await self._attempts(call.service, call.method, f"{call.service}.{call.method}",
                                    call.params, call.deadline, call.deadline - now, meta, lane,
                                    call.span, now)

    async def _attempts(self, service: str, name: str, method: str, params: Any, deadline: float,
                        timeout: float, meta: Optional[dict], lane: Optional[str], span: Any,
                        now: float) -> Any:
        balancer = self._balancers.get(service) or self._new_balancer(service)
        tried, last_error, pause = None, None, 0.005   # failed nodes, their error, the next pause
        while True:
            remaining = deadline - now
            if remaining <= 0:
                sync._expired(self.discovery, service, method, timeout, last_error)
            if service not in self._listed:
                await self._first_list(service, remaining)
                now = time.monotonic()
                continue
            route, candidates, node = self._target(service, name, method, lane, balancer, tried,
                                                   now)
            if span is not None:
                Tracing.attempt(span, node.address)
            hedge_at = 0.0 if route.tail is None else route.tail.hedge_at(now, remaining)
            load, ok, conn = balancer.begin(node), False, None
            try:
                conn = await self.pool.get(node.address, remaining, node.meta.get("workers", 1))
                result = await conn.call(method, params, remaining, meta, route.idempotent,
                                         deadline, hedge_at)
                ok = True
            except HedgeDue as due:
                ok, result = await race(self, due, node, route, method, params, deadline,
                                        balancer, now, meta, span)
                if ok is not None:
                    return result
                last_error = result
            except RpcError as exc:
                verdict = self.health.judge(node.address, exc, conn, route.idempotent, now)
                ok = verdict is ANSWERED   # for balancing, an answer is a success
                if verdict is not RETRY:
                    raise
                last_error = sync._telling(last_error, exc, deadline)
            except asyncio.CancelledError as exc:   # the caller gave up: nothing of the node's
                balancer.end(load, time.monotonic() - now, True)
                load = None
                if exc.__cause__ is None:   # cancelled while connecting, or while racing a hedge
                    raise exc from (NotSent(f"{method}: cancelled before it was sent")
                                    if conn is None else
                                    ConnectionLost(f"{method}: cancelled after it was sent"))
                raise
            else:
                self.health.record(node.address, True, False, now)
                return result
            finally:
                if load is not None:
                    _ended(self, balancer, load, ok, route, now)
            tried, wait = self._retry(tried, node.address, len(candidates), pause, deadline,
                                      last_error)
            if wait is not None:   # every node failed: a pause, so a dead entry can expire
                await asyncio.sleep(wait)
                pause = min(pause * 2, 0.2)
            now = time.monotonic()

    def _target(self, service: str, name: str, method: str, lane: Optional[str], balancer: Any,
                tried: Optional[set], now: float) -> Tuple[Any, Sequence[Node], Node]:
        """The route of the next attempt, its candidates, and the node picked from them."""
        discovery, router = self.discovery, self.router
        nodes = discovery.nodes(service)
        route = router.routes.get(method if lane is None else (method, lane))
        if route is None or route.snapshot is not nodes:
            route = router.route(service, method, name, nodes, lane)
        candidates, weights = route.candidates, route.weights
        if route.preferred is not None or now >= route.stale_at:
            candidates, weights = router.targets(route, self.usable, now)
        if not candidates:   # the service is listed (ready): this raises
            sync._no_candidates(discovery, service, method, nodes, route.lane_miss, lane)
        fresh = ([n for n in candidates if n.address not in tried] or candidates
                 if tried else candidates)
        node = fresh[0] if len(fresh) == 1 else (   # one node: what pick would return
            balancer.pick(fresh, self.usable, weights if fresh is candidates else None)
            or balancer.pick(fresh))   # when every node is ejected, try one anyway
        return route, candidates, node


def _ended(client: Client, balancer: Any, load: Any, ok: Optional[bool], route: Any,
           started: float) -> None:
    """An attempt begun at ``started`` ended (``ok``: the node answered): the balancer's load,
    and for an answer the retry budget's share and the method's latency tail."""
    ended = time.monotonic()
    balancer.end(load, ended - started, bool(ok), ended)
    if ok:   # the node answered: it earns the budget its share of a retry
        client.budget.calls += 1
        if route.tail is not None:
            route.tail.add(ended - started, ended)
