"""Transport: one persistent, multiplexed connection to a node, and what a socket failure means.

A :class:`Connection` carries any number of concurrent calls. Each request gets a fresh integer id;
a reader worker matches responses by id, so they may come back in any order. Socket failures become
the errors of :mod:`framework.errors` here and nowhere else:

* could not connect, or the connection was already known dead -> :class:`NotSent` (safe to retry);
* broke after the request was written -> :class:`ConnectionLost` (the node may have run it);
* no answer in time -> :class:`Timeout`.

A call may also be given a hedge time (:mod:`framework.hedging`): if it has no answer by then it
raises :class:`HedgeDue` and stays in flight, so the caller can send a backup elsewhere and take
whichever answer comes first (:meth:`Connection.follow`, :meth:`Connection.start`).

A forked child drops every connection it inherited (:meth:`Connection.drop_inherited`), without
``shutdown``: the parent keeps its connections, and the child's pool opens its own.

Any failure of the reader - a broken socket, a frame it cannot parse, an answer it cannot match -
marks the connection dead and fails every call in flight on it, so it is never used again. Writes
never hold a caller (:mod:`framework.writing`): a node that stops reading costs its callers no more
than their deadlines, and after ``write_stall`` seconds without progress the connection is given up.

Like discovery, it uses the process's own ``socket`` and ``threading`` modules, so it works with OS
threads in a plain program and with greenlets in a gevent-patched one. In a gevent-patched process a
waiting call costs a ``gevent`` Waiter and nothing else, and a :class:`~framework.sweeper.Sweeper`
enforces deadlines; in a plain program each call waits on its own ``threading.Event``.
"""
from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import socket
import ssl
import threading
import time
import weakref
from typing import Any, Dict, Optional

import gevent
from gevent.hub import Waiter as _Waiter

from . import protocol
from .errors import ConnectionLost, NotSent, ProtocolError, Timeout, from_error_object
from .hedging import HedgeDue
from .sweeper import Sweeper
from .writing import FrameWriter

log = logging.getLogger(__name__)

#: every Connection not yet collected, for the fork hook at the end of this module
_live: "weakref.WeakSet[Connection]" = weakref.WeakSet()


class _Pending:
    """Threaded world: where a waiting call's answer goes (``forward``: and then on to a race)."""

    __slots__ = ("event", "response", "forward")

    def __init__(self):
        self.event = threading.Event()
        self.response: Any = None
        self.forward: Any = None

    def switch(self, value: Any) -> None:
        self.response = value
        self.event.set()
        if self.forward is not None:
            self.forward.switch(value)


class Connection:
    """A client connection to one node. Create with :meth:`open`."""

    _hub: Any = None         # gevent world only: the hub, and the connection's Sweeper
    _sweeper: Any = None
    _pack = staticmethod(protocol.request_packer(one_thread=False))

    def __init__(self, address: str, sock: socket.socket, max_frame: int = protocol.MAX_FRAME,
                 write_stall: float = 5.0):
        self.address = address
        self.sock = sock
        self.max_frame = max_frame
        self.alive = True           # False once the socket failed or closed
        self.accepting = True       # False after the node said it is going away
        self._ids = itertools.count(1)
        self._pending: Dict[int, _Pending] = {}
        # callers never wait on the socket: what it cannot take at once goes to a background writer
        self._writer = FrameWriter(sock, write_stall, self._fail, name=f"framework-send-{address}")
        self._send = self._writer.send
        self.last_recv = time.monotonic()
        self._ping_sent = 0.0       # when the outstanding liveness ping was sent (0: none)
        if _green_threads():
            # calls wait on gevent Waiters: ``_pending`` maps id -> (waiter, deadline, timeout,
            # abandon_on_stall, hedge_at), and one sweeper per connection enforces the deadlines
            self._hub = gevent.get_hub()
            self._sweeper = Sweeper(self)
            self._pack = protocol.request_packer()   # callers share this OS thread
            # a greenlet, not a patched Thread: one lives on in a forked child (see drop_inherited)
            # without threading's bookkeeping, which counts it stopped there
            gevent.spawn(self._read_loop)
        else:
            threading.Thread(target=self._read_loop, name=f"framework-conn-{address}",
                             daemon=True).start()
        _live.add(self)

    @classmethod
    def open(cls, address: str, timeout: float, max_frame: int = protocol.MAX_FRAME,
             tls: Optional[ssl.SSLContext] = None, write_stall: float = 5.0) -> "Connection":
        host, _, port = address.rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
            if tls is not None:
                # the node's certificate must name the address it advertises (IP or DNS SAN)
                sock = tls.wrap_socket(sock, server_hostname=host.strip("[]"))
        except (OSError, ValueError) as exc:  # ssl errors are OSErrors: nothing was sent yet
            raise NotSent(f"cannot connect to {address}: {exc}") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(address, sock, max_frame, write_stall)

    @property
    def green(self) -> bool:
        """True in a gevent-patched process: answers are handed over in the hub."""
        return self._hub is not None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def stalled(self, now: float, after: float) -> bool:
        """True when a liveness ping has gone unanswered for ``after`` seconds: the node is frozen,
        paused or blackholed (no RST ever comes), whatever its lease says."""
        return bool(self._ping_sent) and now - self._ping_sent > after

    def _check_liveness(self, now: float, after: float) -> None:
        # Silence alone proves nothing (a handler may be slow); an unanswered ping does, because the
        # node answers pings from its connection reader without running any handler.
        if self._ping_sent or now - self.last_recv < after:
            return
        self._ping_sent = now
        try:
            self._send(0, protocol.PING_FRAME)
        except OSError as exc:
            self._fail(exc)

    def call(self, method: str, params: Any, timeout: float, meta: Optional[dict] = None,
             stall_after: float = 0.0, abandon_on_stall: bool = False,
             deadline: Optional[float] = None, hedge_at: float = 0.0) -> Any:
        """Send one request and wait for its result (or raise its error). ``meta``: the request's
        ``meta`` entries besides ``timeout_ms`` (token, metadata), or None. ``deadline``: the
        ``time.monotonic()`` value ``timeout`` ends at, when the caller already has it.

        With ``stall_after``, a call that has waited that long checks the node's liveness with a
        ping; if the ping goes unanswered as long again and ``abandon_on_stall`` (the method is
        idempotent), the call is abandoned with ConnectionLost so the caller can re-send it.
        With ``hedge_at`` (a monotonic time), a call unanswered by then raises HedgeDue."""
        if not self.alive or not self.accepting:
            raise NotSent(f"connection to {self.address} is closed")
        rid = next(self._ids)
        frame = self._pack(rid, method, params, int(timeout * 1000), meta)
        if deadline is None:
            deadline = time.monotonic() + timeout
        if self._hub is not None:
            return self._call_green(rid, frame, timeout, deadline, stall_after, abandon_on_stall,
                                    hedge_at or math.inf, method)
        pending = _Pending()
        self._pending[rid] = pending
        self._send_request(rid, frame)
        if not stall_after and not hedge_at:
            done = pending.event.wait(timeout)
        else:
            done = self._wait(rid, pending, deadline, stall_after, abandon_on_stall, hedge_at)
        if not done:
            self._pending.pop(rid, None)
            self._retire_if_idle()
            raise Timeout(f"no answer from {self.address} within {timeout:.3f}s")
        return _result(pending.response)

    def resume(self, due: HedgeDue, deadline: float) -> Any:
        """Go on waiting for the call that raised ``due`` (no backup was sent): its result."""
        if self._hub is not None:
            return _result(due.handle.get())   # still pending: its answer comes to the waiter
        if not due.handle.event.wait(max(0.0, deadline - time.monotonic())):
            self.cancel(due.rid)
            raise Timeout(f"no answer from {self.address} before the deadline")
        return _result(due.handle.response)

    def _wait(self, rid: int, pending: _Pending, end: float, stall_after: float,
              abandon_on_stall: bool, hedge_at: float) -> bool:
        """Threaded world: wait for ``pending`` while checking liveness and the hedge time."""
        while True:
            now = time.monotonic()
            wake = min(end, now + stall_after / 2 if stall_after else end, hedge_at or end)
            if pending.event.wait(max(0.0, wake - now)):
                return True
            now = time.monotonic()
            if now >= end:
                return False
            if hedge_at and now >= hedge_at:
                raise HedgeDue(self, rid, pending)
            if stall_after:
                self._check_liveness(now, stall_after)
                if abandon_on_stall and self.stalled(now, stall_after):
                    self._pending.pop(rid, None)
                    raise ConnectionLost(f"{self.address} stopped answering (no reply to a ping "
                                         f"in {stall_after:.2f}s)")

    def start(self, method: str, params: Any, timeout: float, meta: Optional[dict],
              deadline: float, stall_after: float, slot: Any) -> int:
        """Send a request whose answer (or error) goes to ``slot.switch``, without waiting: a
        hedge. Returns its id, for :meth:`cancel`."""
        if not self.alive or not self.accepting:
            raise NotSent(f"connection to {self.address} is closed")
        rid = next(self._ids)
        frame = self._pack(rid, method, params, int(timeout * 1000), meta)
        if self._hub is not None:
            self._pending[rid] = (slot, deadline, timeout, True)
            self._sweeper.due(deadline, stall_after)
        else:
            self._pending[rid] = slot
        self._send_request(rid, frame)
        return rid

    def follow(self, due: HedgeDue, slot: Any) -> None:
        """From now on, send the answer of the call that raised ``due`` to ``slot.switch``."""
        if self._hub is None:
            due.handle.forward = slot
            if due.handle.event.is_set():   # it came meanwhile (a second copy is ignored)
                slot.switch(due.handle.response)
            return
        entry = self._pending.get(due.rid)
        if entry is not None:
            self._pending[due.rid] = (slot,) + entry[1:]
        else:   # the answer is already on its way to the call's waiter
            slot.switch(due.handle.get())

    def cancel(self, rid: int) -> None:
        """Stop waiting for call ``rid`` (a late answer is dropped); its frame is not sent if it
        is still queued."""
        if self._pending.pop(rid, None) is not None:
            self._writer.discard(rid)
            self._retire_if_idle()

    def probe(self) -> None:
        """Ping the node now, unless a ping is out: it is stalled if none comes back."""
        self._check_liveness(time.monotonic(), 0.0)

    def _send_request(self, rid: int, frame: bytes) -> None:
        try:
            self._send(rid, frame, len(self._pending) == 1)
        except OSError as exc:
            # the call's own error (NotSent if its frame was still queued) arrives as its answer
            self._fail(exc)

    def _call_green(self, rid: int, frame: bytes, timeout: float, deadline: float,
                    stall_after: float, abandon_on_stall: bool, hedge_at: float,
                    method: str) -> Any:
        waiter = _Waiter(self._hub)
        self._pending[rid] = (waiter, deadline, timeout, abandon_on_stall)
        sweeper = self._sweeper
        sweeper.due(deadline, stall_after)
        if hedge_at < deadline:
            queue = sweeper.hedges.get(method)   # one per method: its calls' hedge times rise
            if queue is None:
                queue = sweeper.hedges.setdefault(method, collections.deque())
            queue.append((hedge_at, rid))
            if hedge_at < sweeper.wake_at:
                sweeper.wake(hedge_at)
        self._send_request(rid, frame)
        try:
            # the reader, the sweeper (deadline, stall, hedge time) or _fail hands over the answer
            response = waiter.get()
        except BaseException:  # this caller was killed or timed out by its own code
            self._pending.pop(rid, None)
            raise
        if type(response) is dict:
            if "error" in response:
                raise from_error_object(response["error"])
            return response.get("result")
        raise response

    def _read_loop(self) -> None:
        reader = protocol.FrameReader(self.max_frame)
        error: Optional[BaseException] = None
        green = self._hub is not None
        deliver = self._hub.loop.run_callback if green else None
        try:
            while True:
                data = self.sock.recv(262144)
                if not data:
                    break
                self.last_recv = time.monotonic()
                self._ping_sent = 0.0
                bodies = reader.feed(data)
                unpack = protocol.unpack_body if reader.marked else protocol.unpack_unmarked
                for body in bodies:
                    msg = unpack(body)
                    if type(msg) is not dict:
                        raise ProtocolError("response is not a map")
                    pending = self._pending.pop(msg.get("id"), None)
                    if pending is not None:
                        if green:
                            deliver(pending[0].switch, msg)
                        else:
                            pending.switch(msg)
                    elif msg.get("method") == protocol.GOAWAY:
                        log.info("node %s is going away", self.address)
                        self.accepting = False
                if not self.accepting and not self._pending:
                    break  # retired (node going away or left the registry) and nothing in flight
        except Exception as exc:  # whatever broke the reader, the connection is never used again
            error = exc
        self._fail(error)

    def _fail(self, error: Optional[BaseException]) -> None:
        """The connection is dead: fail every call in flight - with NotSent when its frame never
        left this process (safe to re-send anywhere), else ConnectionLost."""
        if self.alive:
            self.alive = False
            for end in (lambda: self.sock.shutdown(socket.SHUT_RDWR), self.sock.close):
                try:
                    end()   # shutdown first: it wakes a reader blocked in recv, close may not
                except OSError:
                    pass
        why = f": {error}" if error else " (closed by peer)"
        lost = ConnectionLost(f"connection to {self.address} lost{why}")
        unsent = self._writer.take_unsent()
        while self._pending:
            try:
                rid, pending = self._pending.popitem()
            except KeyError:
                break
            exc = NotSent(f"connection to {self.address} failed before the call was sent{why}") \
                if rid in unsent else lost
            if self._hub is not None:
                self._hub.loop.run_callback(pending[0].switch, exc)
            else:
                pending.switch(exc)
        if self._sweeper is not None:
            self._sweeper.kick.set()  # it sees the connection dead and ends

    def retire(self) -> None:
        """Take no new calls; close once the calls in flight have their answers."""
        self.accepting = False
        self._retire_if_idle()

    def _retire_if_idle(self) -> None:
        if not self.accepting and not self._pending:
            self.close()

    def close(self) -> None:
        self._fail(None)

    def drop_inherited(self) -> None:
        """In a forked child: give up this connection, whose socket is the parent's too. Only this
        process's descriptor is closed: ``shutdown`` would end the parent's connection."""
        alive, self.alive, self.accepting = self.alive, False, False
        if alive:
            try:
                self.sock.close()   # in gevent this also wakes the surviving reader greenlet
            except OSError:
                pass
        if self._hub is None:   # the callers were other threads, gone with the fork
            self._pending.clear()
            return
        # greenlets survive a fork: a copy of a call in flight gets ConnectionLost, never NotSent -
        # the parent sends and answers the original, so only an idempotent call is re-sent
        self._writer.take_unsent()
        self._fail(OSError("inherited across fork()"))


def _result(response: Any) -> Any:
    """A call's answer as its caller sees it: the result, or the error raised."""
    if isinstance(response, BaseException):
        raise response
    if "error" in response:
        raise from_error_object(response["error"])
    return response.get("result")


def _drop_inherited_connections() -> None:
    for conn in list(_live):
        try:
            conn.drop_inherited()
        except Exception:   # never fail a fork; the next connection is the child's own anyway
            log.exception("dropping the inherited connection to %s failed", conn.address)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_connections)


def _green_threads() -> bool:
    """True when ``threading`` is gevent-patched: calls wait on Waiters, and a sweeper greenlet
    enforces their deadlines (a real OS thread would need ``threading.Event`` to be woken)."""
    from gevent import monkey
    return monkey.is_module_patched("threading")
