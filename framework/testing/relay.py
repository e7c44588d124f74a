"""A userspace TCP relay that makes a link slow and lossy, for kernels without ``sch_netem``.

:class:`Relay` listens on one address and forwards each connection to an upstream address, both
ways. With ``delay`` it holds every chunk it reads for that long before writing it on (a one-way
delay: 0.1 s each way is a 0.2 s round trip). With ``loss`` it emulates loss the way TCP
experiences it: a lost segment is sent again after a retransmission timeout, so the stream stays
intact but late. Each chunk is "lost" with probability ``loss`` and then held back for an extra
``rto`` (drawn from the given range), and since a byte stream is in order, every chunk after it
waits behind it (head-of-line blocking). Nothing is ever dropped or reordered.

It is bounded: every blocking operation has a timeout, a peer that takes no byte for ``stall``
seconds gets its connection cut, each direction holds at most ``buffer`` bytes (then it stops
reading, as a full TCP window would), and the relay closes itself ``lifetime`` seconds after it
started if nobody closed it before. ``close()`` stops it and closes every socket (idempotent).

Its threads use the network namespace of the thread that called :meth:`Relay.start` (a thread's
namespace is inherited by the threads it starts): :meth:`TestNetwork.relay
<framework.testing.netns.TestNetwork.relay>` starts one inside a member and closes it with the
network.
"""
from __future__ import annotations

import collections
import random
import socket
import threading
import time
from typing import Deque, List, Optional, Tuple

__all__ = ["Relay"]

_TICK = 0.2      # seconds: the longest any blocking call waits before it looks at the stop flag


class Relay:
    """Forward ``listen`` ("host", port) to ``upstream`` ("host", port), slowed and lossy.

    ``delay``, ``loss`` and ``rto`` may be changed at any time (:meth:`set`); they apply to the
    chunks read from then on. ``chunks``, ``held`` (chunks "lost" and held back), ``bytes`` and
    ``connections`` count what it did.
    """

    def __init__(self, listen: Tuple[str, int], upstream: Tuple[str, int], delay: float = 0.0,
                 loss: float = 0.0, rto: Tuple[float, float] = (0.2, 0.4),
                 lifetime: float = 120.0, stall: float = 5.0, buffer: int = 4 << 20,
                 seed: Optional[int] = None):
        self.listen, self.upstream = listen, upstream
        self.delay, self.loss, self.rto = delay, loss, rto
        self.lifetime, self.stall, self.buffer = lifetime, stall, buffer
        self.random = random.Random(seed)
        self.chunks = self.held = self.bytes = self.connections = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._server: Optional[socket.socket] = None
        self._ends_at = 0.0

    def set(self, delay: Optional[float] = None, loss: Optional[float] = None) -> None:
        """Change the fault; chunks read from now on get it."""
        if delay is not None:
            self.delay = delay
        if loss is not None:
            self.loss = loss

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self.listen[1]}"

    def start(self) -> "Relay":
        """Listen (in the calling thread's network namespace) and start forwarding."""
        self._server = socket.create_server(self.listen)
        self.listen = self._server.getsockname()[:2]   # the port it got, when asked for port 0
        self._server.settimeout(_TICK)
        self._ends_at = time.monotonic() + self.lifetime
        self._spawn(self._accept, "relay-accept")
        return self

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
            threads = list(self._threads)
        if self._server is not None:
            self._server.close()
        for sock in sockets:
            _abort(sock)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(2 * _TICK + 1)

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- inside ----------------------------------------------------------------------------------

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stop.is_set():
                return False
            self._sockets.append(sock)
            return True

    def _accept(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() >= self._ends_at:   # nobody closed it: it ends by itself
                self._spawn(self.close, "relay-close")
                return
            try:
                client, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return   # closed
            if not self._keep(client):
                client.close()
                return
            self._spawn(self._connect, "relay-connect", client)

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=1.0)
        except OSError:
            _abort(client)
            return
        if not self._keep(upstream):
            _abort(upstream)
            _abort(client)
            return
        self.connections += 1
        for sock in (client, upstream):
            sock.settimeout(_TICK)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        for src, dst, name in ((client, upstream, "up"), (upstream, client, "down")):
            pipe = _Pipe(self, pair, src, dst)
            self._spawn(pipe.read, f"relay-read-{name}")
            self._spawn(pipe.write, f"relay-write-{name}")

    def _release_at(self, now: float, after: float) -> float:
        """When a chunk read at ``now`` goes on: after the delay, after a retransmission timeout
        if it is "lost", and never before the chunk read before it (``after``)."""
        at = now + self.delay
        self.chunks += 1
        if self.loss and self.random.random() < self.loss:
            self.held += 1
            at += self.random.uniform(*self.rto)
        return max(at, after)


class _Pair:
    """The two sockets of one relayed connection; closed once both directions ended."""

    def __init__(self, a: socket.socket, b: socket.socket):
        self.sockets, self.open, self.lock = (a, b), 2, threading.Lock()

    def done(self, broken: bool) -> None:
        with self.lock:
            self.open -= 1
            last = self.open == 0
        if broken or last:
            for sock in self.sockets:
                _abort(sock)


class _Pipe:
    """One direction of a connection: ``read`` queues chunks with their release times, ``write``
    sends each on at its time, in order."""

    def __init__(self, relay: Relay, pair: _Pair, src: socket.socket, dst: socket.socket):
        self.relay, self.pair, self.src, self.dst = relay, pair, src, dst
        self.queue: Deque[Tuple[float, Optional[bytes]]] = collections.deque()   # None: EOF
        self.queued = 0
        self.last = 0.0      # release time of the latest chunk
        self.cond = threading.Condition()
        self.broken = False

    def _running(self) -> bool:
        return not (self.relay._stop.is_set() or self.broken)

    def read(self) -> None:
        relay = self.relay
        while self._running():
            with self.cond:   # a full buffer: stop reading, as a full receive window would
                while self.queued >= relay.buffer and self._running():
                    self.cond.wait(_TICK)
            try:
                data = self.src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                self._break()
                return
            with self.cond:
                self.last = relay._release_at(time.monotonic(), self.last)
                self.queue.append((self.last, data or None))
                self.queued += len(data)
                relay.bytes += len(data)
                self.cond.notify_all()
            if not data:
                return   # EOF, passed on in order by write()

    def write(self) -> None:
        stop = self.relay._stop
        while self._running():
            with self.cond:
                if not self.queue:
                    self.cond.wait(_TICK)
                    continue
                at, data = self.queue[0]
            wait = at - time.monotonic()
            if wait > 0:
                stop.wait(min(wait, _TICK))   # woken early only by close()
                continue
            with self.cond:
                self.queue.popleft()
                self.queued -= len(data or b"")
                self.cond.notify_all()
            if data is None:
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self.pair.done(False)
                return
            if not self._send(data):
                self._break()
                return

    def _send(self, data: bytes) -> bool:
        """All of ``data``, as long as the peer takes a byte every ``stall`` seconds."""
        view, progress = memoryview(data), time.monotonic()
        while view:
            if not self._running():
                return False
            try:
                n = self.dst.send(view)
            except socket.timeout:
                if time.monotonic() - progress > self.relay.stall:
                    return False
                continue
            except OSError:
                return False
            view, progress = view[n:], time.monotonic()
        return True

    def _break(self) -> None:
        self.broken = True
        with self.cond:
            self.cond.notify_all()
        self.pair.done(True)


def _abort(sock: socket.socket) -> None:
    for end in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            end()   # shutdown first: it wakes a thread blocked on the socket, close may not
        except OSError:
            pass
