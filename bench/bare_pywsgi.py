"""Baseline for the gateway bench: the HTTP JSON-RPC limit of plain gevent ``pywsgi``, with no framework.

One WSGI app answers ``POST /`` with a JSON-RPC ``Hello``: it reads the body, parses it with
``json.loads``, and answers ``{"jsonrpc": "2.0", "id": ..., "result": "hello:" + params[0]}`` with
``json.dumps``, as a hand-written WSGI JSON-RPC endpoint would. Nothing is forwarded anywhere, so
this is what ``pywsgi`` + ``json`` cost per request. The handler turns Nagle off, as the gateway's
and the node's do (pywsgi writes headers and body separately); the access log is off (``log=None``).

``python -m bench.bare_pywsgi [PORT]`` prints ``ready <port>`` and serves until killed.
"""
from __future__ import annotations

import json
import socket
import sys

from gevent.pywsgi import WSGIHandler, WSGIServer


class _Handler(WSGIHandler):
    def handle(self):
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    req = json.loads(environ["wsgi.input"].read(length))
    body = json.dumps({"jsonrpc": "2.0", "id": req.get("id"),
                       "result": "hello:" + req["params"][0]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def serve(port: int = 0) -> None:
    server = WSGIServer(("127.0.0.1", port), app, handler_class=_Handler, log=None)
    server.start()
    print(f"ready {server.address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    from gevent import monkey
    monkey.patch_all()
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
