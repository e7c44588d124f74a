"""Run as ``python tests/stop_probe.py``: an in-process ``Server.stop()`` in a gevent-patched process
closes the HTTP keep-alive connections a client left open. Prints one JSON line."""
from gevent import monkey

monkey.patch_all()

import http.client  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

import framework  # noqa: E402
from tests.services import HelloService  # noqa: E402


def main():
    server = framework.Server([HelloService], host="127.0.0.1", port=0, etcd=False).start()
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "HelloService.Hello", "params": ["x"]})
    conn.request("POST", "/", body, {"Content-Type": "application/json"})
    first = conn.getresponse()
    answer = json.loads(first.read())
    keep_alive = not first.will_close
    t0 = time.monotonic()
    gevent.spawn(server.stop, grace=0)
    # the kept-alive socket must now be closed by the node: a read returns EOF, it does not hang
    closed_after = None
    try:
        data = conn.sock.recv(1)
        if data == b"":
            closed_after = time.monotonic() - t0
    except OSError:
        closed_after = time.monotonic() - t0
    print(json.dumps({"answer": answer, "keep_alive": keep_alive, "closed_after": closed_after}),
          flush=True)


if __name__ == "__main__":
    main()
