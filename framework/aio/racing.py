"""Racing a hedge on an event loop: :func:`framework.racing.race` for the asyncio client.

The same race - which node gets the backup and whether the retry budget pays for it
(:func:`~framework.racing.backup_node`), what each answer means for the nodes' health, the
balancer and the latency tail (:func:`~framework.racing.settle`), dropping the loser
(:func:`~framework.racing.drop_losers`) - with the two attempts as futures, the first to complete
taken by ``asyncio.wait``.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Optional, Tuple

from ..errors import NotSent, RpcError
from ..health import RETRY
from ..hedging import HedgeDue
from ..racing import backup_node, drop_losers, more, settle, unanswered
from ..record import Node
from ..tracing import Tracing


async def race(client: Any, due: HedgeDue, node: Node, route: Any, method: str, params: Any,
               deadline: float, balancer: Any, started: float, meta: Optional[dict],
               span: Any) -> Tuple[Optional[bool], Any]:
    """``node`` has not answered ``method`` by its hedge time: send a backup to another node and
    take the first answer. Returns ``(True, result)`` when ``node`` answered first, ``(False,
    result)`` when the backup did, ``(None, error)`` when both failed in a way that allows a
    retry; raises what the caller should see otherwise."""
    other = backup_node(client, node, route, balancer)
    now = time.monotonic()
    if other is None:
        try:   # no backup: wait on for the first node
            return True, await due.conn.resume(due)
        except RpcError as exc:
            if client.health.judge(node.address, exc, due.conn, True, now) is not RETRY:
                raise
            return None, exc
    attempts = {0: (node, due.conn, due.rid, None, started)}   # as in framework.racing
    waiting = {due.handle: 0}   # future -> its attempt's tag
    tried = [node]

    async def send_to(target: Optional[Node]) -> None:
        tried.append(target)
        if target is None:
            return
        backup = await _backup(client, target, method, params, deadline, balancer, meta, span)
        if backup is not None:
            attempts[len(tried) - 1] = backup[:5]
            waiting[backup[5]] = len(tried) - 1

    error: Optional[RpcError] = None
    try:
        await send_to(other)
        if len(attempts) == 1:   # it could not be sent: another node, if there is one
            await send_to(more(client, node, route, balancer, tried))
        while waiting:
            done, _ = await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise unanswered(method, attempts, started)
            for fut in done:
                tag = waiting.pop(fut)
                value = fut.exception() or fut.result()
                won, value = settle(client, tag, value, attempts.pop(tag), node, due.conn, route,
                                    balancer)
                if won:
                    return tag == 0, value
                error = value
                if attempts:   # the other attempt is still silent (framework.racing.more)
                    await send_to(more(client, node, route, balancer, tried))
        return None, error
    finally:
        drop_losers(attempts, balancer)
        for fut in waiting:   # a loser's error, if any, is nobody's concern
            if fut.done() and not fut.cancelled():
                fut.exception()


async def _backup(client: Any, other: Node, method: str, params: Any, deadline: float,
                  balancer: Any, meta: Optional[dict], span: Any) -> Optional[tuple]:
    """Send the hedge to ``other``: ``(node, conn, rid, load, sent, future)``, or None when it
    could not be sent."""
    now = time.monotonic()
    if span is not None:
        Tracing.attempt(span, other.address, hedge=True)
    load = balancer.begin(other)
    try:
        conn = await client.pool.get(other.address, deadline - now, other.meta.get("workers", 1))
        rid, fut = conn.start(method, params, deadline - now, meta, deadline)
    except NotSent:
        client.health.record(other.address, False, True, now)
        balancer.end(load, 0.0, False, now)
        return None
    client.hedging.sent += 1
    return other, conn, rid, load, now, fut
