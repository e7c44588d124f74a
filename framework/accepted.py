"""The accepted connection: one client's msgpack stream on a node, from bytes in to answers out.

Its reader turns frames into calls; the node's :class:`~framework.workers.Workers` run them, and
their answers are written back as they complete (out of order), coalesced:

* **Reading.** Between frames a connection may idle for ever; once a frame has begun, the peer has
  ``frame_timeout`` seconds to finish it, so a slow sender cannot pin memory. Pings are answered
  here, without a handler, so an unanswered ping means the node is stalled, never merely busy.
* **Backpressure, and busy is not stalled.** A request runs once it has one of the connection's
  ``max_conn_in_flight`` slots and one of the node's workers. When either is taken, the reader
  parks the request and goes on reading, so it still answers pings: a saturated node is never
  taken for a frozen one. A starter greenlet runs the parked requests in order as slots come
  free. Once ``max_parked`` requests (or ``max_parked_bytes``) wait, the reader stops reading,
  and TCP pushes back on the sender.
* **Shedding.** A request that would wait too long for a worker is refused at once with
  ``Overloaded`` (the node's :class:`~framework.shedding.Shedder` sets how many may wait).
* **Lone requests run in the reader.** With nothing else in flight on the connection and no call
  waiting for a worker, the request runs in the reader itself, which saves the hand-off to a worker
  (two greenlet switches and a hub turn). Should it block, the hub runs :meth:`_take_over` meanwhile
  and a new reader greenlet goes on reading, so pings are still answered and later calls still start.
* **Answers out** go through the connection's :class:`~framework.writing.Outbox`: coalesced, and
  a peer that takes no byte of them for ``write_timeout`` seconds is cut off, so its calls give
  back their slots and no greenlet stays blocked on it. The reader's own answers (pongs,
  refusals) are written at once, without yielding.
"""
from __future__ import annotations

import collections
import logging
import socket
import time
from typing import Any, List

import gevent
import gevent.event
import gevent.lock

from . import protocol
from .errors import GoingAway, InternalError, Overloaded, ParseError, ProtocolError
from .writing import Outbox, send_within, sender

log = logging.getLogger(__name__)

class AcceptedConnection:
    """The node's side of one client connection. ``node`` is the :class:`~framework.server.Server`:
    its limits, workers and dispatcher, and whether it is going away."""

    __slots__ = ("node", "sock", "peer", "outbox", "in_flight", "closed", "idle", "slots",
                 "queued", "frames", "frame_began", "reader", "inline", "finished", "send_nowait",
                 "parked", "parked_bytes", "unparked", "starter")

    def __init__(self, node: Any, sock: socket.socket, peer: Any):
        self.node = node
        self.sock = sock
        self.peer = peer
        self.send_nowait = sender(sock)
        #: answers out: coalesced, and cut off after write_timeout without progress
        self.outbox = Outbox(sock, node.pool.queued, node.write_part, node.write_timeout,
                             self._cut, self.send_nowait)
        self.in_flight = 0
        self.closed = False
        self.idle = gevent.event.Event()
        self.idle.set()
        # the per-connection in-flight cap: the reader takes a slot per request, the call frees it
        self.slots = gevent.lock.BoundedSemaphore(node.max_conn_in_flight)
        self.queued = node.pool.queued   # the node's calls waiting for a worker
        self.frames = protocol.FrameReader(node.max_frame)   # shared by successive readers
        self.frame_began = time.monotonic()   # when the frame being read began to arrive
        self.reader: Any = None          # the greenlet reading this connection now
        self.inline: Any = None          # the reader while it runs a call itself
        self.finished = gevent.event.Event()   # set once the last reader closed the connection
        self.parked: collections.deque = collections.deque()   # (request, received, size)
        self.parked_bytes = 0
        self.unparked = gevent.event.Event()   # the starter made room among the parked
        self.starter: Any = None               # the greenlet starting parked requests

    # ---- reading ---------------------------------------------------------------------------------

    def serve(self, first: bytes) -> None:
        """Run in the accepting greenlet: read until the peer leaves, then close. Returns only once
        the last reader is done (the StreamServer closes the socket when this returns)."""
        self.read(first)
        if self.reader is not gevent.getcurrent():
            self.finished.wait()   # a reader that took over is still reading

    def read(self, first: bytes = b"") -> None:
        """The connection's reader: frames in, calls started. It runs in the accepting greenlet,
        or in a replacement started by :meth:`_take_over` when a call it ran blocked."""
        me = self.reader = gevent.getcurrent()
        frames = self.frames
        try:
            while not self.closed:
                if first:
                    data, first = first, b""
                else:
                    data = self._recv(frames)
                if not data:
                    break
                if not frames.buffered:
                    self.frame_began = time.monotonic()
                try:
                    bodies = frames.feed(data)
                except ProtocolError as exc:
                    self._reject(exc)
                    break
                if not self._start(bodies, me):
                    return
        finally:
            if self.reader is me:
                self._finish()

    def _recv(self, frames: protocol.FrameReader) -> bytes:
        """The next bytes, or b"" when the peer left or took too long to finish a frame."""
        sock = self.sock
        if frames.buffered:
            sock.settimeout(max(0.001, self.frame_began + self.node.frame_timeout - time.monotonic()))
        else:
            sock.settimeout(None)
        try:
            return sock.recv(262144)
        except OSError as exc:
            if isinstance(exc, socket.timeout):
                log.info("closing connection from %s: frame not finished in %ss",
                         self.peer[0], self.node.frame_timeout)
            return b""

    def _start(self, bodies: List[bytes], me: Any) -> bool:
        """Start the calls in ``bodies``; False when this greenlet must stop reading (the
        connection is rejected, or a call it ran blocked and another reader took over)."""
        node = self.node
        workers, cap = node.pool, node.max_conn_in_flight
        received = time.monotonic()
        unpack = protocol.unpack_body if self.frames.marked else protocol.unpack_unmarked
        for body in bodies:
            try:
                obj = unpack(body)
            except ParseError as exc:
                self._reject(exc)
                return False
            if type(obj) is dict and obj.get("method") == protocol.PING:
                self.outbox.send_now(protocol.PONG_FRAME)  # liveness: answered even when busy
                continue
            if node.going_away:
                self._refuse(obj, GoingAway("node is shutting down; call not processed"))
                continue
            if len(self.queued) >= node.shedder.limit:   # it would wait too long: refused now
                self._shed(obj)
                continue
            if not self.in_flight:
                self.idle.clear()
            self.in_flight += 1   # parked or running: answered before the connection closes
            if self.parked or workers.busy >= workers.size or self.in_flight > cap:
                self._park(obj, received, len(body))
                continue
            self.slots.acquire()
            if self.in_flight == 1 and len(bodies) == 1 and not self.queued:
                self._run_inline(obj, received, me)
                if self.reader is not me:
                    return False  # the call blocked: a new reader took over (and the close)
            else:
                node.pool.submit(self.run, obj, received)
        return True

    def _park(self, obj: Any, received: float, size: int) -> None:
        """No slot free now: queue the request for the starter; wait (the reader stops reading)
        only while the parked ones are over the limits."""
        self.parked.append((obj, received, size))
        self.parked_bytes += size
        if self.starter is None:
            self.starter = gevent.spawn(self._start_parked)
        node = self.node
        while (len(self.parked) >= node.max_parked or self.parked_bytes >= node.max_parked_bytes) \
                and not self.closed:
            self.unparked.clear()
            self.unparked.wait()

    def _start_parked(self) -> None:
        """The starter: run the parked requests in order, each as soon as it gets its slots."""
        parked, pool, shedder = self.parked, self.node.pool, self.node.shedder
        try:
            while parked and not self.closed:
                obj, received, size = parked[0]
                self.slots.acquire()
                if len(self.queued) >= shedder.limit:   # it waited, and would wait on: refused
                    self.slots.release()
                    self.in_flight -= 1
                    self._shed(obj)
                else:
                    pool.submit(self.run, obj, received)   # blocks while the workers are full
                parked.popleft()
                self.parked_bytes -= size
                self.unparked.set()
        finally:
            self.starter = None
            if self.closed:
                self._drop_parked()

    def _drop_parked(self) -> None:
        """The connection closed: parked requests will never run, nor be answered."""
        while self.parked:
            self.parked.popleft()
            self.in_flight -= 1
        self.parked_bytes = 0
        if not self.in_flight:
            self.idle.set()
        self.unparked.set()

    def _run_inline(self, obj: Any, received: float, me: Any) -> None:
        self.inline = me
        self.node.hub.loop.run_callback(self._take_over, me)
        try:
            self.node.pool.run_here(self.run, obj, received)
        finally:
            if self.inline is me:
                self.inline = None

    def _take_over(self, me: Any) -> None:
        # in the hub: if ``me`` is still inside a call it ran inline, that call blocked
        if self.inline is me and self.reader is me and not self.closed:
            self.reader = gevent.spawn(self.read)

    def _finish(self) -> None:
        """The last reader is done: close the connection once its calls are answered."""
        self.node.connections.discard(self)
        if self.parked and self.starter is None:
            self._drop_parked()
        if self.in_flight:
            # the peer may only have half-closed (SHUT_WR): its answers still go out
            self.idle.wait(self.node.drain_timeout)
        self.close()
        self.finished.set()

    # ---- calls -----------------------------------------------------------------------------------

    def run(self, obj: Any, received: float) -> None:
        """Dispatch one request and send its answer; frees the request's in-flight slot."""
        node = self.node
        try:
            response = node.dispatcher.handle(obj, received, self.peer)
            if response is not None and not self.closed:
                try:
                    frame = node.pack(response)
                except Exception as exc:  # the handler returned something msgpack cannot encode
                    frame = protocol.pack(protocol.error_response(response.get("id"), InternalError(
                        f"result could not be encoded: {exc}")))
                self.outbox.send(frame)
                self.outbox.throttle(node.max_pending_output)
        finally:
            self.slots.release()
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    def _reject(self, exc: BaseException) -> None:
        log.warning("closing connection from %s: %s", self.peer[0], exc)
        try:
            send_within(self.sock, protocol.pack(protocol.error_response(None, exc)),
                        self.node.write_timeout, self.send_nowait)
        except OSError:
            pass

    def _refuse(self, obj: Any, exc: Exception) -> None:   # "not processed": the call never ran
        rid = obj.get("id") if isinstance(obj, dict) else None
        if rid is not None:
            self.outbox.send_now(protocol.pack(protocol.error_response(rid, exc)))

    def _shed(self, obj: Any) -> None:
        self.node.shedder.shed += 1
        self._refuse(obj, Overloaded("node overloaded; call not processed"))

    # ---- writing (the Outbox) and closing -------------------------------------------------------

    def _cut(self, exc: OSError) -> None:
        """A write failed or the peer stopped reading: end the connection, so its reader finishes,
        its calls' answers are dropped and their slots come free."""
        if isinstance(exc, socket.timeout):
            log.info("closing connection from %s: it read nothing for %ss", self.peer[0],
                     self.node.write_timeout)
        self.shutdown()

    def go_away(self) -> None:
        """Tell the peer the node is draining: it sends no new calls on this connection."""
        self.outbox.send(protocol.GOAWAY_FRAME)

    def shutdown(self) -> None:
        """End the connection at the end of a drain: the reader sees the close and finishes."""
        self.closed = self.outbox.closed = True
        self.outbox.drained.set()   # wakes calls waiting in throttle()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.closed = self.outbox.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
