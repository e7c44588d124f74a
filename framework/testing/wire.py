"""Talking to a node's port by hand, as a hostile or foreign peer would: msgpack frames and plain
HTTP, with the framing of :mod:`framework.protocol` (docs/protocol.md)."""
from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import time
from typing import Any, List, Optional, Tuple

from .. import protocol

__all__ = ["frame_header", "frame", "RawConnection", "http_request", "post_json", "established"]


def frame_header(length: int) -> bytes:
    """The 4-byte header declaring a body of ``length`` bytes, whatever follows it (or not)."""
    return struct.pack(">I", length)


def frame(body: bytes) -> bytes:
    """A frame around ``body`` as given: unlike :func:`framework.protocol.pack`, which encodes an
    object, this frames bytes that need not be valid msgpack."""
    return frame_header(len(body)) + body


class RawConnection:
    """A plain TCP connection to ``"host:port"`` (a node or a gateway), bypassing the client.

    ``send`` writes frames and raw bytes; ``read_frames`` collects the node's answers, decoded
    with :class:`framework.protocol.FrameReader` and :func:`framework.protocol.unpack_body`;
    ``recv`` reads raw bytes (HTTP). ``sock`` is the socket, for anything else. Use it as a
    context manager, or call ``close()``.

    ``timeout`` is the socket's timeout (connect included); ``rcvbuf`` sets ``SO_RCVBUF`` before
    connecting, which is when a small receive window must be asked for."""

    def __init__(self, address: str, timeout: float = 5.0, rcvbuf: Optional[int] = None,
                 max_frame: int = 16 * 1024 * 1024):
        host, _, port = address.rpartition(":")
        if rcvbuf is None:
            self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host.strip("[]"), int(port)))
        self.timeout = timeout
        self.reader = protocol.FrameReader(max_frame)
        self.closed = False   # set once the peer closed (or reset) the connection

    def send(self, *items: Any) -> None:
        """One write of every item in turn: ``bytes`` as they are, anything else as the frame of
        :func:`framework.protocol.pack` (a request object, say)."""
        self.sock.sendall(b"".join(item if isinstance(item, (bytes, bytearray))
                                   else protocol.pack(item) for item in items))

    def recv(self, size: int = 65536, timeout: Optional[float] = None) -> bytes:
        """One ``recv`` of raw bytes (``b""`` once the peer closed); ``timeout`` is for this read
        only. Socket errors propagate."""
        if timeout is None:
            return self.sock.recv(size)
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(size)
        finally:
            self.sock.settimeout(self.timeout)

    def read_all(self) -> bytes:
        """Raw bytes until the peer closes (an HTTP/1.0 answer, say)."""
        chunks = []
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed = True
                return b"".join(chunks)
            chunks.append(chunk)

    def read_frames(self, timeout: float = 3.0, want: int = 1 << 30) -> Tuple[List[Any], bool]:
        """Decoded frames until ``want`` arrived, the peer closed or ``timeout`` passed; returns
        ``(frames, closed)``. Every frame decoded from the bytes read is returned, so there may
        be more than ``want``; a partial frame stays buffered for the next call."""
        frames: List[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(frames) < want and not self.closed and time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    break
                except OSError:   # a reset is the peer closing too
                    data = b""
                if not data:
                    self.closed = True
                    break
                frames += [protocol.unpack_body(body) for body in self.reader.feed(data)]
        finally:
            self.sock.settimeout(self.timeout)
        return frames, self.closed

    def shutdown_write(self) -> None:
        """Half-close: the peer reads EOF, and can still answer."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def http_request(address: str, method: str, path: str, body=None, headers=None,
                 timeout: float = 20.0):
    """One plain HTTP request to ``"host:port"``; returns ``(status, headers, body bytes)``."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def post_json(address: str, body, headers=None, timeout: float = 20.0):
    """POST a JSON-RPC request (or batch) to ``"host:port"``: ``body`` is an object, sent as
    JSON, or ``bytes``/``str`` sent as they are (broken JSON, say). Returns ``(status, decoded
    answer or None when the body was empty)``."""
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    status, _, data = http_request(address, "POST", "/", body, headers, timeout)
    return status, (json.loads(data) if data else None)


def established(port: int, this_process: bool = True) -> int:
    """ESTABLISHED TCP connections whose remote end is ``port``, as the kernel sees them
    (``/proc/net/tcp*``): this process's only, or the whole host's."""
    mine = _own_socket_inodes() if this_process else None
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if (fields[3] == "01" and int(fields[2].rpartition(":")[2], 16) == port
                    and (mine is None or fields[9] in mine)):
                count += 1
    return count


def _own_socket_inodes() -> set:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:   # closed since listdir
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes

