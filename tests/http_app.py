"""A server process for tests/test_httpserver.py: an app that reports what it saw, served by
framework.httpserver (``ours``) or by gevent's pywsgi (``pywsgi``), for a side-by-side check.

``python -m tests.http_app ours|pywsgi [request_timeout idle_timeout write_timeout max_body]``
prints ``ready <port>`` and serves until killed.

* ``POST /`` (any other path too): a JSON body with the environ's plain values and the body's length;
* ``/big``: 8 MB of ``x`` (for a peer that stops reading);
* ``/boom``: the app raises;
* ``/open``: how many connections the server is serving (``ours`` only).
"""
import json
import sys

from gevent import monkey

monkey.patch_all()

#: environ keys whose values are the same from any server (objects and addresses left out)
PLAIN = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "CONTENT_TYPE",
         "CONTENT_LENGTH", "SCRIPT_NAME")
serving = [0]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom")
    body = environ["wsgi.input"].read()
    if path == "/big":
        out = b"x" * (8 * 1024 * 1024)
    elif path == "/open":
        out = json.dumps({"open": serving[0]}).encode()
    else:
        seen = {k: v for k, v in environ.items() if k in PLAIN or k.startswith("HTTP_")}
        seen["body_length"] = len(body)
        out = json.dumps(seen, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]


def main() -> None:
    from gevent.pywsgi import WSGIServer
    from gevent.server import StreamServer

    from framework.httpserver import HttpBounds, serve

    kind = sys.argv[1]
    if kind == "pywsgi":
        server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    else:
        numbers = [float(x) for x in sys.argv[2:6]] or [30.0, 75.0, 10.0, 1024 * 1024]
        bounds = HttpBounds(request_timeout=numbers[0], idle_timeout=numbers[1],
                            write_timeout=numbers[2], max_body=int(numbers[3]))
        def handle(sock, peer):
            serving[0] += 1
            try:
                serve(sock, peer, app, bounds)
            finally:
                serving[0] -= 1
        server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    print(f"ready {server.address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
