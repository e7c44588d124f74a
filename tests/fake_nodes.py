"""Nodes that misbehave on purpose, registered in a real etcd like any node: one that accepts
connections and never reads them, one that reads and never answers, one that answers every request
with a frame no client can match (and two plain ones: refusing, answering).
Each runs on its own thread in the test process and is closed at teardown (``processes.add``)."""
import json
import socket
import threading

import msgpack

from framework import protocol
from framework.etcd import Etcd

METHODS = {"Put": {"idempotent": False}, "Get": {"idempotent": True}}


class FakeNode:
    """Listens on loopback; ``handle(sock)`` runs per accepted connection on its own thread."""

    def __init__(self, etcd_endpoint: str, service: str, rcvbuf: int = 0):
        self.listener = socket.socket()
        if rcvbuf:   # inherited by accepted sockets: a small window fills fast
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.accepted: list = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()
        record = {"address": self.address, "service": service, "methods": METHODS}
        Etcd(etcd_endpoint).put(f"/services/{service}/{self.address}", json.dumps(record))

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(sock)
            threading.Thread(target=self.handle, args=(sock,), daemon=True).start()

    def handle(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed.set()
        for sock in [self.listener, *self.accepted]:
            try:
                sock.close()
            except OSError:
                pass


class DeafNode(FakeNode):
    """Accepts, then never reads: the client's writes fill the window and stop."""

    def handle(self, sock: socket.socket) -> None:
        self.closed.wait()


class AnsweringNode(FakeNode):
    """Reads requests and answers each with ``answer(request id)``; counts the requests."""

    requests = 0

    def answer(self, rid) -> dict:
        raise NotImplementedError

    def handle(self, sock: socket.socket) -> None:
        reader = protocol.FrameReader()
        while not self.closed.is_set():
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            answers = []
            for body in reader.feed(data):
                self.requests += 1
                answers.append(protocol.pack(self.answer(msgpack.unpackb(body).get("id"))))
            try:
                sock.sendall(b"".join(answers))
            except OSError:
                return


class RefusingNode(AnsweringNode):
    """Answers every request with -32001 *going away, not processed*, which a client may re-send
    to any node whatever the method: the cheapest way to provoke retries."""

    def answer(self, rid) -> dict:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32001, "message": "going away"}}


class SilentNode(FakeNode):
    """Reads everything and never answers, not even a ping: a hung process whose kernel still
    takes the bytes."""

    def handle(self, sock: socket.socket) -> None:
        while not self.closed.is_set():
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return


class ResultNode(AnsweringNode):
    """Answers every request with the result ``"ok"``."""

    def answer(self, rid) -> dict:
        return {"jsonrpc": "2.0", "id": rid, "result": "ok"}


class GarbledNode(AnsweringNode):
    """Answers each request with a map whose id is a list: well-formed msgpack, but no client can
    look it up, so the client's reader fails on it."""

    def answer(self, rid) -> dict:
        return {"jsonrpc": "2.0", "id": [rid], "result": 1}
