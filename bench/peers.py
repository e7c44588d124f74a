"""Peer RPC libraries serving the same ``Hello(name) -> "hello:" + name``, each its usual way.

* zerorpc: gevent + msgpack + zeromq; one ``zerorpc.Server``.
* Pyro5: its default threaded server (a thread pool, one connection per proxy), default serializer.
* grpcio: the synchronous server with a thread pool; a generic unary handler with UTF-8 string
  (de)serializers, so no generated code is needed (this spares grpc the protobuf cost: a kind peer).

``python -m bench.peers <zerorpc|pyro5|grpc>`` prints ``ready <port>`` and serves until killed.
Client factories for the load driver are here too, next to their servers.
"""
from __future__ import annotations

import socket
import sys
import time
from typing import Callable

GRPC_METHOD = "/bench.Hello/Hello"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_zerorpc() -> None:
    from gevent import monkey
    monkey.patch_all()
    import zerorpc

    class Hello:
        def Hello(self, name):
            return "hello:" + name

    port = _free_port()
    server = zerorpc.Server(Hello(), pool_size=1000)
    server.bind(f"tcp://127.0.0.1:{port}")
    print(f"ready {port}", flush=True)
    server.run()


def serve_pyro5() -> None:
    import Pyro5.api
    import Pyro5

    Pyro5.config.THREADPOOL_SIZE = 200  # one thread per connected proxy: room for 64 callers

    @Pyro5.api.expose
    class Hello:
        def Hello(self, name):
            return "hello:" + name

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=_free_port())
    daemon.register(Hello, objectId="hello")
    print(f"ready {daemon.locationStr.rsplit(':', 1)[1]}", flush=True)
    daemon.requestLoop()


def serve_grpc() -> None:
    from concurrent import futures

    import grpc

    def hello(request, context):
        return "hello:" + request

    handler = grpc.method_handlers_generic_handler("bench.Hello", {
        "Hello": grpc.unary_unary_rpc_method_handler(
            hello, request_deserializer=bytes.decode, response_serializer=str.encode)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"ready {port}", flush=True)
    while True:
        time.sleep(3600)


# ---- clients: factory(port) -> per-caller setup() -> call() ----------------------------------------

def zerorpc_client(port: int) -> Callable[[], Callable[[], str]]:
    import zerorpc
    client = zerorpc.Client(f"tcp://127.0.0.1:{port}", timeout=30, heartbeat=None)
    return lambda: (lambda: client.Hello("world"))  # one client, multiplexed by zerorpc channels


def pyro5_client(port: int) -> Callable[[], Callable[[], str]]:
    import Pyro5.api

    def per_caller():
        proxy = Pyro5.api.Proxy(f"PYRO:hello@127.0.0.1:{port}")  # a proxy belongs to one thread
        return lambda: proxy.Hello("world")
    return per_caller


def grpc_client(port: int) -> Callable[[], Callable[[], str]]:
    import grpc
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = channel.unary_unary(GRPC_METHOD, request_serializer=str.encode,
                               response_deserializer=bytes.decode)
    return lambda: (lambda: stub("world"))


SERVERS = {"zerorpc": serve_zerorpc, "pyro5": serve_pyro5, "grpc": serve_grpc}

if __name__ == "__main__":
    SERVERS[sys.argv[1]]()
