"""Benchmark suite (``make bench``): the framework against a bare gevent+msgpack loop and other Python
RPC libraries, plus discovery propagation, registry scale and balancer cases. Not part of ``make test``.

Modules: ``run`` orchestrates one interleaved run; ``load`` is the client-side load driver (one
process per measurement); ``baseline`` is the bare stack; ``peers`` serves zerorpc, Pyro5 and grpcio;
``registry`` measures discovery and scale; ``slow_service`` is a Hello node with an optional delay;
``chart`` draws the PNG. The scale section is ``scale`` (``etcd_load``: etcd requests and connections
per 1,000 nodes; ``fanout``: one registration to 1,000 watchers; ``workers``: 1 against 2 workers;
``gateway``: the gateway, a bare pywsgi handler and a node's HTTP under ``wrk``; ``aio``: the asyncio
client against the gevent client and ``grpc.aio``). Each of these also runs alone: ``python -m
bench.<name>``.
"""
