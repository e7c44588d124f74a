"""Racing a hedge: a slow idempotent call gets a backup copy on another node; the first answer wins.

The client calls :func:`race` when an attempt raised :class:`~framework.hedging.HedgeDue` (no
answer by the method's hedge time, :mod:`framework.hedging`). A backup away from a healthy node is
paid for from the retry budget; one away from a node already known to be failing replaces a lost
call and is free. The loser is cancelled (its frame is dropped if still queued), and a primary that
lost the race counts as a failure for its health and is pinged, so a frozen node is found fast.
Those decisions (:func:`backup_node`, :func:`settle`, :func:`drop_losers`) are shared with the
asyncio client's race (:mod:`framework.aio.racing`).
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Tuple

from .errors import NotSent, RpcError, Timeout, from_error_object
from .health import RETRY
from .hedging import Answers, HedgeDue
from .record import Node
from .tracing import Tracing


def race(client: Any, due: HedgeDue, node: Node, route: Any, method: str, params: Any,
         deadline: float, balancer: Any, started: float, meta: Optional[dict],
         span: Any) -> Tuple[Optional[bool], Any]:
    """``node`` has not answered ``method`` by its hedge time: send a backup to another node
    and take the first answer. Returns ``(True, result)`` when ``node`` answered first,
    ``(False, result)`` when the backup did, ``(None, error)`` when both failed in a way that
    allows a retry; raises what the caller should see otherwise."""
    other = backup_node(client, node, route, balancer)
    now = time.monotonic()
    if other is None:
        try:   # no backup: wait on for the first node
            return True, due.conn.resume(due, deadline)
        except RpcError as exc:
            if client.health.judge(node.address, exc, due.conn, True, now) is not RETRY:
                raise
            return None, exc
    answers = Answers(due.conn.green)
    due.conn.follow(due, answers.slot(0))
    # tag -> (node, conn, rid, load, when sent)
    attempts = {0: (node, due.conn, due.rid, None, started)}
    tried = [node]

    def send_to(target: Optional[Node]) -> None:
        tried.append(target)
        backup = _backup(client, answers, target, method, params, deadline, balancer, meta, span,
                         len(tried) - 1)
        if backup is not None:
            attempts[len(tried) - 1] = backup

    send_to(other)
    if len(attempts) == 1:   # it could not be sent: another node, if there is one
        send_to(more(client, node, route, balancer, tried))
    error: Optional[RpcError] = None
    try:
        while attempts:
            got = answers.wait(deadline - time.monotonic())
            if got is None:   # threaded world: nothing delivers a Timeout, the wait ends
                raise unanswered(method, attempts, started)
            tag, value = got
            attempt = attempts.pop(tag, None)
            if attempt is None:
                continue   # a second copy of an answer
            won, value = settle(client, tag, value, attempt, node, due.conn, route, balancer)
            if won:
                return tag == 0, value
            error = value
            if attempts:   # the other attempt is still silent: see more()
                send_to(more(client, node, route, balancer, tried))
        return None, error
    finally:
        drop_losers(attempts, balancer)


#: attempts one race makes at most: the first, its backup, and one in place of a failed one
MAX_ATTEMPTS = 3


def more(client: Any, node: Node, route: Any, balancer: Any, tried: list) -> Optional[Node]:
    """One attempt of a race failed (refused by a busy node, or not sent) while the other is
    still silent, maybe on a node frozen but not found out yet: a node not tried yet for one
    more, rather than waiting on the silent one to the deadline; None when the race made
    MAX_ATTEMPTS already, no node is left, or the retry budget refuses."""
    if len(tried) >= MAX_ATTEMPTS:
        return None
    return backup_node(client, node, route, balancer, exclude=tried)


def unanswered(method: str, attempts: dict, started: float) -> Timeout:
    """The Timeout of a race that no attempt won in time, naming the nodes still silent (which
    tells an operator whether the backup, too, went somewhere slow)."""
    silent = " and ".join(f"{'the backup on ' if tag else ''}{attempt[0].address}"
                          for tag, attempt in sorted(attempts.items()))
    return Timeout(f"{method}: deadline passed {time.monotonic() - started:.3f}s after it was "
                   f"sent; no answer from {silent or 'any node'}")


def backup_node(client: Any, node: Node, route: Any, balancer: Any,
                exclude: Sequence[Any] = ()) -> Optional[Node]:
    """Where the backup of a call slow on ``node`` goes; None when there is no other node (of
    the preferred ones, while one is usable: a slow call does not leave its zone), or the retry
    budget refuses the hedge."""
    targets = route.candidates
    if route.preferred is not None and any(client.usable(n) for n in route.preferred):
        targets = route.preferred   # as for an attempt: the preferred nodes while one is usable
    others = [n for n in targets if n is not node and n not in exclude]
    # as for a first attempt: when no other node is usable, a guess beats waiting it out
    other = balancer.pick(others, client.usable) or balancer.pick(others)
    # a hedge away from a node already known to be failing (ejected, or silent to a ping)
    # replaces a lost call, it adds no load: only a hedge away from a healthy node is paid for
    if other is None or (client.usable(node) and
                         not client.budget.withdraw(time.monotonic(), hedge=True)):
        return None
    return other


def settle(client: Any, tag: int, value: Any, attempt: tuple, node: Node, primary: Any,
           route: Any, balancer: Any) -> Tuple[bool, Any]:
    """One answer of a race: ``value`` (a response object or an error) of the attempt tagged
    ``tag`` (0: the primary on ``node`` over ``primary``, 1: the backup). Returns ``(True,
    result)`` when it won, ``(False, error)`` when it failed in a way that allows a retry;
    raises otherwise."""
    anode, conn, _, load, sent = attempt
    now = time.monotonic()
    if load is not None:
        balancer.end(load, now - sent, type(value) is dict, now)
    if type(value) is dict and "error" not in value:
        client.health.record(anode.address, True, False, now)
        if tag:   # (the caller records a primary's answer)
            # the backup's own latency: the hedge delay is the tail of one attempt, and counting
            # the wait before the backup in it would raise the delay with every hedge won
            route.tail.add(now - sent, now)
            client.budget.calls += 1
            _primary_lost(client, node, primary, now)
        return True, value.get("result")
    exc = value if isinstance(value, RpcError) else from_error_object(value["error"])
    if client.health.judge(anode.address, exc, conn, True, now) is not RETRY:
        raise exc
    return False, exc


def drop_losers(attempts: dict, balancer: Any) -> None:
    """The race is over: forget the attempts still in ``attempts`` (their answers are dropped)."""
    for _, conn, rid, load, sent in attempts.values():
        conn.cancel(rid)
        if load is not None:
            balancer.end(load, time.monotonic() - sent, True)


def _backup(client: Any, answers: Answers, other: Optional[Node], method: str, params: Any,
            deadline: float, balancer: Any, meta: Optional[dict], span: Any,
            tag: int) -> Optional[tuple]:
    """Send the hedge (attempt ``tag``) to ``other``; None when it could not be sent, or there
    is no ``other``."""
    if other is None:
        return None
    now = time.monotonic()
    if span is not None:
        Tracing.attempt(span, other.address, hedge=True)
    load = balancer.begin(other)
    try:
        conn = client.pool.get(other.address, deadline - now, other.meta.get("workers", 1))
        rid = conn.start(method, params, deadline - now, meta, deadline,
                         client.pool.stall_after, answers.slot(tag))
    except NotSent:
        client.health.record(other.address, False, True, now)
        balancer.end(load, 0.0, False, now)
        return None
    client.hedging.sent += 1
    return other, conn, rid, load, now

def _primary_lost(client: Any, node: Node, conn: Any, now: float) -> None:
    """The backup answered first: ``node`` was slow this time, a failure for its health (three
    in a row eject it for a while); a ping tells whether it is frozen."""
    client.hedging.won += 1
    client.health.record(node.address, False, False, now)
    conn.probe()
