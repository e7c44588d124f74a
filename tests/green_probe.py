"""Run as ``python tests/green_probe.py ETCD``: the client's call path in a gevent-patched process.

There a waiting call holds a gevent Waiter, and one sweeper greenlet per connection enforces the
deadlines and the liveness check. Prints one JSON line per phase; after ``"phase": "freeze"`` the
test SIGSTOPs one of the two nodes while 16 greenlets keep calling the idempotent ``Hello`` with a
0.5 s timeout.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

import framework  # noqa: E402
from framework.testing import Load, wait_until  # noqa: E402


def timed(fn):
    t0 = time.monotonic()
    try:
        fn()
        return "ok", time.monotonic() - t0
    except BaseException as exc:  # gevent.Timeout is a BaseException
        return f"{type(exc).__module__}.{type(exc).__name__}", time.monotonic() - t0


def main():
    client = framework.Client(etcd=sys.argv[1], timeout=3)
    client.HelloService.Hello("warm")
    # deadlines: a slow call ends at its deadline, not at the sweeper's next liveness check
    short = timed(lambda: client.call("HelloService.Sleep", [2], timeout=0.3))
    # a caller's own gevent.Timeout around a call leaves nothing behind on the connection
    own = timed(lambda: gevent.with_timeout(0.1, client.HelloService.Sleep, 1))
    # 64 concurrent greenlets, all answered
    greenlets = [gevent.spawn(client.HelloService.Hello, str(i)) for i in range(64)]
    gevent.joinall(greenlets, timeout=10)
    results = [g.value for g in greenlets]
    ok = sum(r == f"hello:{i}" for i, r in enumerate(results))
    conns = list(client.pool._conns.values())
    gevent.sleep(0.05)  # the answer to the abandoned Sleep(1) may still be on its way
    print(json.dumps({"phase": "basics", "short": short, "own": own, "concurrent_ok": ok,
                      "left_pending": sum(c.in_flight for c in conns)}), flush=True)

    # two nodes now; one is frozen while the callers run
    wait_until(lambda: len(client.nodes("HelloService")) == 2, timeout=10)
    # 16 callers for 6 s (patched, the load's threads are greenlets)
    # at a 0.5 s timeout: the calls stuck on the frozen node are hedged to the other one
    with Load(lambda: client.call("HelloService.Hello", ["x"], timeout=0.5), callers=16) as load:
        gevent.sleep(1)
        print(json.dumps({"phase": "freeze"}), flush=True)
        gevent.sleep(5)   # the rest of the 6 s window, not a wait for a condition
    print(json.dumps({"phase": "done", "calls": len(load.ok),
                      "errors": [e.value for e in load.errors[:5]],
                      "max_latency": max(r.seconds for r in load.ok + load.errors),
                      "hedges": client.hedging.sent}), flush=True)


if __name__ == "__main__":
    main()
