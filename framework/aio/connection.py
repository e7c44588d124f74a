"""Transport on an event loop: one multiplexed connection per node, as an asyncio Protocol.

The asyncio twin of :mod:`framework.transport`, with the same wire (:mod:`framework.protocol`) and
the same meaning of a failure:

* could not connect, the connection was already known dead, or the call's frame was still in this
  process when the connection failed or the caller gave up -> :class:`NotSent` (safe to re-send);
* broke after the frame was handed to the socket -> :class:`ConnectionLost` (the node may have
  run it); a caller cancelled after that point is told so too (its ``CancelledError`` is raised
  ``from`` a ConnectionLost);
* no answer by the deadline -> :class:`Timeout`.

Each call is a future in ``_pending`` (by request id); the connection's
:class:`~framework.aio.sweeper.LoopSweeper` enforces deadlines with one timer for all of them, and
at a call's hedge time hands its caller a :class:`~framework.hedging.HedgeDue` (the call stays in
flight under a new future).

Writes never wait: frames queue in this object and go out together once per turn of the loop, so
64 callers cost one ``send`` (the only call in flight is written at once: it has no one to wait
for). The transport may buffer a byte at most before asyncio pauses us (the socket did not take
a whole batch); frames queued meanwhile were certainly not sent. A node that takes no byte for
``write_stall`` seconds loses its connection.

Once a call has waited ``stall_after / 2``, a node silent for ``stall_after`` gets a ping, which a
node answers from its reader; a ping unanswered for ``stall_after`` more marks it stalled (frozen,
paused, blackholed), and its idempotent calls are abandoned with ConnectionLost, so the client
re-sends them elsewhere. A ``$goaway`` notification stops new calls;
the connection closes once its calls are answered.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import protocol
from ..errors import ConnectionLost, NotSent, ProtocolError, RpcError, Timeout, from_error_object
from ..hedging import HedgeDue
from .sweeper import LoopSweeper

log = logging.getLogger(__name__)


class AioConnection(asyncio.Protocol):
    """A client connection to one node on the running loop. Create with :meth:`open`."""

    def __init__(self, address: str, pack: Callable[..., bytes], max_frame: int,
                 stall_after: float, write_stall: float):
        self.address = address
        self.alive = True           # False once the connection failed or closed
        self.accepting = True       # False after the node said it is going away
        self.last_recv = time.monotonic()
        self.stall_after, self.write_stall = stall_after, write_stall
        self._pack = pack
        self._reader = protocol.FrameReader(max_frame)
        self._ids = itertools.count(1)
        #: request id -> (future of its answer, abandon when the node stalls, deadline, timeout)
        self._pending: Dict[int, Tuple[asyncio.Future, bool, float, float]] = {}
        self._out: List[bytes] = []        # frames not yet handed to the transport ...
        self._out_ids: List[int] = []      # ... and their request ids (0: a ping)
        self._flushing: Any = None         # the loop callback that hands them over
        self._paused = False               # the transport holds bytes the socket did not take
        self._write_mark = (0.0, 0)        # (since when, buffered bytes) while paused
        self._ping_sent = 0.0
        self._loop = asyncio.get_running_loop()
        self._transport: Any = None
        self._sweeper = LoopSweeper(self)

    @classmethod
    async def open(cls, address: str, timeout: float, pack: Callable[..., bytes],
                   max_frame: int = protocol.MAX_FRAME, tls: Optional[ssl.SSLContext] = None,
                   stall_after: float = 0.5, write_stall: float = 5.0) -> "AioConnection":
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: cls(address, pack, max_frame, stall_after, write_stall), host, int(port),
                ssl=tls, server_hostname=host if tls is not None else None), timeout)
        except (OSError, ValueError, asyncio.TimeoutError) as exc:   # ssl errors are OSErrors
            raise NotSent(f"cannot connect to {address}: {exc or 'timed out'}") from None
        return conn

    # ---- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        # pause as soon as the transport holds a byte the socket did not take (TLS: pauses at
        # high <= size, plain TCP at high < size; 0 would keep TLS paused), so what is queued
        # meanwhile is known unsent (NotSent) should the connection fail
        transport.set_write_buffer_limits(high=1, low=0)   # (asyncio sets TCP_NODELAY itself)

    def data_received(self, data: bytes) -> None:
        self.last_recv = time.monotonic()
        self._ping_sent = 0.0
        pending = self._pending
        try:
            bodies = self._reader.feed(data)
            unpack = protocol.unpack_body if self._reader.marked else protocol.unpack_unmarked
            for body in bodies:
                msg = unpack(body)
                if type(msg) is not dict:
                    raise ProtocolError("response is not a map")
                entry = pending.pop(msg.get("id"), None)
                if entry is not None:
                    if not entry[0].done():
                        entry[0].set_result(msg)
                elif msg.get("method") == protocol.GOAWAY:
                    log.info("node %s is going away", self.address)
                    self.accepting = False
        except Exception as exc:   # a bad frame or answer: the connection is never used again
            self._fail(exc)
            return
        if not self.accepting and not pending:
            self.close()

    def eof_received(self) -> bool:
        self._fail(None)
        return False

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._fail(exc)

    def pause_writing(self) -> None:
        self._paused = True
        self._write_mark = (time.monotonic(), self._transport.get_write_buffer_size())
        self._sweeper.due(0.0)   # watch the write's progress

    def resume_writing(self) -> None:
        self._paused = False
        self._flush()

    # ---- calls -----------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def queued(self) -> int:
        """Frames still in this process (not yet handed to the socket)."""
        return len(self._out)

    async def call(self, method: str, params: Any, timeout: float, meta: Optional[dict],
                   abandon_on_stall: bool, deadline: float, hedge_at: float = 0.0) -> Any:
        """Send one request and await its result (or raise its error). ``meta``: the request's
        ``meta`` besides ``timeout_ms``. ``abandon_on_stall``: the method is idempotent, so a
        stalled node's call may be given up (ConnectionLost) and re-sent. With ``hedge_at`` (a
        monotonic time before ``deadline``), a call unanswered by then raises HedgeDue."""
        if not self.alive or not self.accepting:
            raise NotSent(f"connection to {self.address} is closed")
        rid = next(self._ids)
        fut = self._loop.create_future()
        self._pending[rid] = (fut, abandon_on_stall, deadline, timeout)
        self._send(rid, self._pack(rid, method, params, int(timeout * 1000), meta))
        sweeper = self._sweeper
        if deadline < sweeper.scan_at:
            sweeper.due(deadline)
        if 0.0 < hedge_at < deadline:
            sweeper.hedge(method, hedge_at, rid, fut)
        try:
            msg = await fut
        except asyncio.CancelledError as exc:
            raise exc from self._gave_up(rid, fut)
        if type(msg) is dict:
            if "error" in msg:
                raise from_error_object(msg["error"])
            return msg.get("result")
        raise msg   # HedgeDue: still in flight, its answer goes to msg.handle

    async def resume(self, due: HedgeDue) -> Any:
        """Go on waiting for the call that raised ``due`` (no backup was sent): its result, by
        the call's own deadline."""
        try:
            msg = await due.handle
        except asyncio.CancelledError as exc:
            raise exc from self._gave_up(due.rid, due.handle)
        if "error" in msg:
            raise from_error_object(msg["error"])
        return msg.get("result")

    def start(self, method: str, params: Any, timeout: float, meta: Optional[dict],
              deadline: float) -> Tuple[int, asyncio.Future]:
        """Send a request without waiting (a hedge): its id and the future of its answer (a
        response object; or the error set on it, Timeout at ``deadline``)."""
        if not self.alive or not self.accepting:
            raise NotSent(f"connection to {self.address} is closed")
        rid = next(self._ids)
        fut = self._loop.create_future()
        self._pending[rid] = (fut, True, deadline, timeout)
        self._send(rid, self._pack(rid, method, params, int(timeout * 1000), meta))
        if deadline < self._sweeper.scan_at:
            self._sweeper.due(deadline)
        return rid, fut

    def cancel(self, rid: int) -> bool:
        """Stop waiting for call ``rid`` (a late answer is dropped). Returns True when its frame
        was still queued: it is dropped, never sent."""
        self._pending.pop(rid, None)
        queued = rid in self._out_ids
        if queued:
            i = self._out_ids.index(rid)
            del self._out_ids[i], self._out[i]
        if not self.accepting and not self._pending:
            self.close()
        return queued

    def _gave_up(self, rid: int, fut: asyncio.Future) -> RpcError:
        """The caller's task was cancelled while awaiting call ``rid``: what that means for the
        call (the error it had just met, if any; else whether its frame had left)."""
        if fut.done() and not fut.cancelled() and isinstance(fut.exception(), RpcError):
            self.cancel(rid)
            return fut.exception()
        if self.cancel(rid):
            return NotSent(f"call to {self.address} cancelled before it was sent")
        return ConnectionLost(f"call to {self.address} cancelled after it was sent: the node "
                              f"may have run it")

    def _expire(self, rid: int) -> None:
        """Call ``rid``'s deadline passed (the sweeper): Timeout."""
        entry = self._pending.get(rid)
        if entry is not None:
            self.cancel(rid)
            if not entry[0].done():
                entry[0].set_exception(Timeout(f"no answer from {self.address} within "
                                               f"{entry[3]:.3f}s"))

    # ---- writing ---------------------------------------------------------------------------------

    def _send(self, rid: int, frame: bytes) -> None:
        if self._flushing is None and not self._paused:
            if len(self._pending) <= 1 and not self._out:
                # the only call in flight: no one to share a write with, no turn to wait
                self._transport.write(frame)
                return
            # once per turn of the loop: every caller of this turn shares one write
            self._flushing = self._loop.call_soon(self._flush)
        self._out.append(frame)
        self._out_ids.append(rid)

    def _flush(self) -> None:
        self._flushing = None
        out = self._out
        if not out or self._paused or not self.alive:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_ids.clear()
        self._transport.write(data)

    def _writing(self, now: float) -> bool:
        """While paused (the sweeper): False, and the connection given up, once the node has
        taken no byte for ``write_stall`` seconds."""
        since, size = self._write_mark
        buffered = self._transport.get_write_buffer_size()
        if buffered < size:
            self._write_mark = (now, buffered)
        elif now - since > self.write_stall:
            self._fail(OSError(f"no byte written for {self.write_stall:.1f}s"))
            return False
        return True

    # ---- liveness --------------------------------------------------------------------------------

    def stalled(self, now: float, after: float) -> bool:
        """True when a liveness ping has gone unanswered for ``after`` seconds."""
        return bool(self._ping_sent) and now - self._ping_sent > after

    def probe(self) -> None:
        """Ping the node now, unless a ping is out: it is stalled if none comes back."""
        if not self._ping_sent and self.alive:
            self._ping_sent = time.monotonic()
            self._send(0, protocol.PING_FRAME)

    def _check_liveness(self, now: float, after: float) -> None:
        # Silence alone proves nothing (a handler may be slow); an unanswered ping does, because
        # the node answers pings from its connection reader without running any handler.
        if not self._ping_sent and now - self.last_recv >= after:
            self.probe()

    def _abandon(self, after: float) -> None:
        """The node is stalled: its idempotent calls fail with ConnectionLost (re-sent
        elsewhere)."""
        lost = None
        for rid, entry in list(self._pending.items()):
            fut = entry[0]
            if entry[1] and not fut.done():
                lost = lost or ConnectionLost(f"{self.address} stopped answering (no reply to "
                                              f"a ping in {after:.2f}s)")
                self._pending.pop(rid, None)
                fut.set_exception(lost)

    # ---- the end ---------------------------------------------------------------------------------

    def _fail(self, error: Optional[BaseException]) -> None:
        """The connection is dead: fail every call in flight - with NotSent when its frame never
        left this process (safe to re-send anywhere), else ConnectionLost."""
        if self.alive:
            self.alive = False
            if self._transport is not None:
                self._transport.abort()
        self._sweeper.stop()
        why = f": {error}" if error else " (closed by peer)"
        unsent = set(self._out_ids)
        self._out.clear()
        self._out_ids.clear()
        lost = ConnectionLost(f"connection to {self.address} lost{why}")
        while self._pending:
            rid, entry = self._pending.popitem()
            if not entry[0].done():
                entry[0].set_exception(NotSent(f"connection to {self.address} failed before the "
                                               f"call was sent{why}") if rid in unsent else lost)

    def retire(self) -> None:
        """Take no new calls; close once the calls in flight have their answers."""
        self.accepting = False
        if not self._pending:
            self.close()

    def close(self) -> None:
        """Close now: calls in flight fail (ConnectionLost, or NotSent if still queued)."""
        if self.alive and self._transport is not None and not self._pending:
            self.alive = False   # nothing in flight: a graceful close
            self._transport.close()
        self._fail(ConnectionAbortedError("closed by this client"))
