"""Baseline: the bare gevent + msgpack limit, with no framework at all.

One TCP connection; each request is ``[id, method, params]`` and each reply ``[id, result]``, both
streamed as plain msgpack objects (no length prefix: ``msgpack.Unpacker`` finds the boundaries).
Replies are matched by id. On both sides, frames queued while the writer was away go out together in
one ``sendall``. The server answers inline in its reader greenlet (nothing is spawned per request),
so this is what gevent + msgpack can do with nothing in the way.

``python -m bench.baseline serve`` prints ``ready <port>`` and serves until killed.
"""
from __future__ import annotations

import itertools
import logging
import socket
import sys
from typing import Any, Dict, List

import gevent
import gevent.event
import msgpack
from gevent.server import StreamServer

log = logging.getLogger(__name__)


def _handle(sock, _peer) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    unpacker = msgpack.Unpacker(raw=False)
    packer = msgpack.Packer()
    while True:
        data = sock.recv(262144)
        if not data:
            break
        unpacker.feed(data)
        out = []
        for rid, _method, params in unpacker:
            out.append(packer.pack((rid, "hello:" + params[0])))
        if out:
            sock.sendall(b"".join(out))
    sock.close()


def serve(port: int = 0) -> None:
    server = StreamServer(("127.0.0.1", port), _handle)
    server.start()
    print(f"ready {server.address[1]}", flush=True)
    server.serve_forever()


class BareClient:
    """One multiplexed connection; a writer greenlet flushes everything queued in one write."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._ids = itertools.count()
        self._pending: Dict[int, gevent.event.AsyncResult] = {}
        self._out: List[bytes] = []
        self._wake = gevent.event.Event()
        self._packer = msgpack.Packer()
        self._reader = gevent.spawn(self._read)
        self._writer = gevent.spawn(self._write)

    def call(self, method: str, params: list) -> Any:
        rid = next(self._ids)
        result = self._pending[rid] = gevent.event.AsyncResult()
        self._out.append(self._packer.pack((rid, method, params)))
        self._wake.set()
        return result.get()

    def _write(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            out, self._out = self._out, []
            if out:
                self.sock.sendall(b"".join(out))

    def _read(self) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = self.sock.recv(262144)
            if not data:
                break
            unpacker.feed(data)
            for rid, value in unpacker:
                self._pending.pop(rid).set(value)

    def close(self) -> None:
        self._reader.kill()
        self._writer.kill()
        self.sock.close()


if __name__ == "__main__":
    from gevent import monkey
    monkey.patch_all()
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
