"""Writing to a socket with a bound: no caller ever waits on a peer that stopped reading.

A write first goes out without waiting (``send_nowait``): the socket takes the whole burst whenever
its buffer has room, which is the usual case. Only when the buffer is full does anything wait, and
then with a *stall* bound: a peer that takes no byte for ``stall`` seconds is given up on
(``send_within`` raises ``socket.timeout``), while one that is merely slow - a thin link, a large
frame - keeps the connection as long as it makes progress.

:class:`FrameWriter` is the client's side of it. Callers queue ``(request id, frame)`` pairs and
return at once; the first caller of a burst writes the batch without waiting, and what the socket
does not take goes to a background writer (a thread, a greenlet in a patched process), so the
callers go on to wait for their answers with their own deadlines. The ids still queued when the
connection fails are the calls that were never sent (:meth:`FrameWriter.take_unsent`).

:class:`Outbox` is the node's side: a connection's answers, coalesced. The first answer of a
burst waits one loop turn while calls are queued, so their answers share a write; once ``part``
answers are queued they go out at once, so the caller decodes them on another core while the node
computes the rest. A peer that takes no byte for ``write_timeout`` seconds is cut off.

Works with plain sockets and gevent's, TLS or not. One gap: TLS in an unpatched, threaded program
writes in blocking mode (CPython's SSL sockets cannot skip a wait per call without changing the mode
the reader thread shares), so there only the callers are bounded, not the background write.
"""
from __future__ import annotations

import collections
import select
import socket
import threading
from typing import Any, Callable, List, Optional, Set

from gevent import sleep
from gevent.socket import wait_write


def _if_free(lock: Any, write: Callable[[], None]) -> bool:
    """Run ``write()`` holding ``lock``, unless someone else holds it; False when it did not run."""
    if not lock.acquire(False):
        return False
    try:
        write()
    finally:
        lock.release()
    return True


def _cooperative() -> bool:
    """True in a gevent-patched process: there, deferring a write by one turn of the loop batches it."""
    from gevent import monkey
    return monkey.is_module_patched("socket")


def _tls(sock: Any) -> bool:
    return getattr(sock, "_sslobj", None) is not None or hasattr(sock, "cipher")


def sender(sock: Any) -> Callable[[Any], int]:
    """``send_nowait(data)`` for ``sock``: the bytes it took without waiting, 0 when its buffer is
    full. Raises OSError when the connection is broken."""
    if _cooperative():
        if not _tls(sock):
            def green_send(data: Any) -> int:
                try:
                    return sock.send(data, 0, 0.0)   # gevent: timeout 0.0 raises instead of waiting
                except BlockingIOError:
                    return 0
            return green_send

        def green_tls_send(data: Any) -> int:
            # gevent's SSL send waits per the socket's timeout; the loop cannot switch to the reader
            # between these lines, so lending it 0.0 for one call is safe
            previous = sock.timeout
            sock.settimeout(0.0)
            try:
                return sock.send(data)
            except BlockingIOError:
                return 0
            finally:
                sock.settimeout(previous)
        return green_tls_send
    if _tls(sock):
        return sock.send   # blocking: see the module docstring

    def plain_send(data: Any) -> int:
        try:
            return sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
    return plain_send


def wait_writable(sock: Any, timeout: float) -> bool:
    """Wait until ``sock`` can take a byte; False when ``timeout`` passed first."""
    if _cooperative():
        try:
            wait_write(sock.fileno(), timeout=timeout)
        except socket.timeout:
            return False
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def send_within(sock: Any, data: Any, stall: float,
                send_nowait: Optional[Callable[[Any], int]] = None) -> None:
    """Write all of ``data``, waiting as long as the peer makes progress; raises ``socket.timeout``
    when it takes no byte for ``stall`` seconds (the rest is not sent: the stream is broken)."""
    send_nowait = send_nowait or sender(sock)
    view = memoryview(data)
    while view:
        n = send_nowait(view)
        if n:
            view = view[n:]
        elif not wait_writable(sock, stall):
            raise socket.timeout(f"the peer took no byte for {stall:.1f}s")


class FrameWriter:
    """A client connection's outgoing frames. ``on_error(exc)`` runs once a write failed; the
    connection then fails its calls (see :meth:`take_unsent`)."""

    __slots__ = ("sock", "out", "stall", "on_error", "send_nowait", "cooperative", "lock",
                 "flushing", "backlog", "name")

    def __init__(self, sock: Any, stall: float, on_error: Callable[[BaseException], None],
                 name: str = "framework-writer"):
        self.sock = sock
        self.out: collections.deque = collections.deque()   # (rid, frame) not yet written
        self.stall = stall
        self.on_error = on_error
        self.send_nowait = sender(sock)
        self.cooperative = _cooperative()
        self.lock = threading.Lock()     # threads: one writer at a time
        self.flushing = False            # gevent: a greenlet is collecting this burst
        self.backlog: Any = None         # what the background writer still has to write
        self.name = name

    def send(self, rid: int, frame: bytes, alone: bool = False) -> None:
        """Queue ``frame``; returns without waiting on the peer. Raises OSError when the write it
        made found the connection broken. ``alone``: no other call is in flight on the connection,
        so no other frame is likely to come this turn of the loop and this one goes out at once."""
        out = self.out
        out.append((rid, frame))
        if self.cooperative:
            if self.flushing:
                return  # the greenlet already flushing takes this frame too
            self.flushing = True
            try:
                if not alone:
                    sleep(0)  # let every greenlet that is ready now queue its frame first
                if self.backlog is None:   # else the background writer takes it
                    self._flush()
            finally:
                self.flushing = False
            return
        self._flush_threads()

    def _flush_threads(self) -> None:
        out = self.out
        while out and self.backlog is None and _if_free(self.lock, self._flush):
            pass   # re-check after the release: a frame may have come meanwhile

    def _flush(self) -> None:
        out = self.out
        while out:
            n = len(out)
            data = out.popleft()[1] if n == 1 else b"".join([out.popleft()[1] for _ in range(n)])
            sent = self.send_nowait(data)
            if sent < len(data):
                self.backlog = memoryview(data)[sent:]
                threading.Thread(target=self._write_backlog, name=self.name, daemon=True).start()
                return

    def _write_backlog(self) -> None:
        """The background writer: everything queued, waiting while the peer makes progress."""
        out = self.out
        with self.lock:
            try:
                while self.backlog is not None:
                    send_within(self.sock, self.backlog, self.stall, self.send_nowait)
                    n = len(out)
                    self.backlog = (b"".join([out.popleft()[1] for _ in range(n)]) if n
                                    else None)
            except OSError as exc:
                self.backlog = None
                self.on_error(exc)
                return
        if not self.cooperative:
            self._flush_threads()   # frames queued while the lock was still held

    def discard(self, rid: int) -> bool:
        """Drop call ``rid``'s frame if no write has taken it yet (a hedge's loser: the node need
        not get it). Best effort in a threaded program: skipped while a write is under way (a
        greenlet cannot be interrupted while it looks)."""
        if self.cooperative:
            return self._remove(rid)
        if not self.lock.acquire(False):
            return False
        try:
            return self._remove(rid)
        finally:
            self.lock.release()

    def _remove(self, rid: int) -> bool:
        for item in self.out:
            if item[0] == rid:
                self.out.remove(item)
                return True
        return False

    def take_unsent(self) -> Set[int]:
        """The ids of the frames no write has taken yet (their calls were never sent); clears them."""
        unsent = set()
        out = self.out
        while out:
            try:
                unsent.add(out.popleft()[0])
            except IndexError:
                break
        return unsent


class Outbox:
    """A node's answers to one accepted connection (gevent only). ``queued``: the node's calls
    waiting for a worker (while there are any, a burst's first answer waits for theirs);
    ``on_cut(exc)`` ends the connection when a write fails or stalls."""

    __slots__ = ("sock", "queued", "part", "write_timeout", "on_cut", "send_nowait", "out",
                 "out_bytes", "flushing", "write_lock", "drained", "closed")

    def __init__(self, sock: Any, queued: Any, part: int, write_timeout: float,
                 on_cut: Callable[[OSError], None], send_nowait: Callable[[Any], int]):
        import gevent.event
        import gevent.lock
        self.sock, self.queued, self.part = sock, queued, part
        self.write_timeout, self.on_cut, self.send_nowait = write_timeout, on_cut, send_nowait
        self.out: List[bytes] = []
        self.out_bytes = 0          # queued or being written; bounded by throttle()
        self.flushing = False       # a greenlet is collecting this burst's answers to send them
        self.write_lock = gevent.lock.Semaphore()   # one write at a time: frames never interleave
        self.drained = gevent.event.Event()
        self.closed = False         # set by the connection: nothing more is written

    def send(self, frame: bytes) -> None:
        """Queue ``frame``; the first writer of a burst sends everything queued meanwhile."""
        out = self.out
        out.append(frame)
        self.out_bytes += len(frame)
        if self.flushing:
            # a full part goes out now instead of at the end of the burst (see the module docstring)
            if len(out) >= self.part:
                self._write_if_free()
            return
        self.flushing = True
        try:
            # one loop turn first when calls are waiting: they run now and queue their frames too
            # (a lone call's answer goes out at once)
            if self.queued:
                sleep(0)
            with self.write_lock:
                while out and not self.closed:
                    self._write()
        finally:
            self.flushing = False
            self.drained.set()

    def send_now(self, frame: bytes) -> None:
        """Queue ``frame`` and write it now, without yielding: the reader's own answers (pongs,
        refusals) must not wait for the calls it queued (a running flush sends it instead)."""
        self.out.append(frame)
        self.out_bytes += len(frame)
        if not self.flushing:
            self._write_if_free()

    def _write_if_free(self) -> None:
        """Write what is queued, unless a write is under way (it then takes these frames too)."""
        _if_free(self.write_lock, self._write)

    def _write(self) -> None:
        out = self.out
        chunk = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        try:
            n = self.send_nowait(chunk)
            if n < len(chunk):   # the peer's window is full: wait, but only while it reads
                send_within(self.sock, memoryview(chunk)[n:], self.write_timeout, self.send_nowait)
        except OSError as exc:
            self.on_cut(exc)
            return
        self.out_bytes -= len(chunk)
        self.drained.set()

    def throttle(self, limit: int) -> None:
        """Wait while more than ``limit`` bytes are queued for a peer that does not read: the call
        keeps its in-flight slot meanwhile, so the reader stops and memory stays bounded."""
        while self.flushing and self.out_bytes > limit and not self.closed:
            self.drained.clear()
            self.drained.wait()
