"""Benchmark suite (``make bench``): the framework against a bare gevent+msgpack loop and other Python
RPC libraries, plus discovery propagation, registry scale and balancer cases. Not part of ``make test``.

Modules: ``run`` orchestrates one interleaved run; ``load`` is the client-side load driver (one
process per measurement); ``baseline`` is the bare stack; ``peers`` serves zerorpc, Pyro5 and grpcio;
``registry`` measures discovery and scale; ``slow_service`` is a Hello node with an optional delay;
``chart`` draws the PNG.
"""
