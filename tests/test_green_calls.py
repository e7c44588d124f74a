"""The client in a gevent-patched process: waiting calls hold a Waiter, and one sweeper greenlet per
connection enforces deadlines and detects a frozen node (tests/green_probe.py runs the calls)."""

from framework.testing import wait_until
from tests.probes import start_probe


def test_deadlines_and_a_frozen_node_in_a_patched_client(etcd, serve_node, processes):
    first = serve_node("tests.services")
    proc, messages = start_probe(processes, "tests/green_probe.py", etcd.endpoint)
    phase = lambda name: next((m for m in messages() if m["phase"] == name), None)  # noqa: E731
    basics = wait_until(lambda: phase("basics"), timeout=30, message="the basic calls")
    kind, took = basics["short"]
    assert kind == "framework.errors.Timeout" and 0.3 <= took < 0.8, basics
    kind, took = basics["own"]
    assert kind == "gevent.timeout.Timeout" and took < 0.5, basics   # the caller's own
    assert basics["concurrent_ok"] == 64
    assert basics["left_pending"] == 0

    serve_node("tests.services")   # a second node to fail over to
    wait_until(lambda: phase("freeze"), timeout=30, message="callers running on both nodes")
    first.freeze()
    try:
        done = wait_until(lambda: phase("done"), timeout=30, message="the callers to finish")
    finally:
        first.thaw()
    assert proc.wait(10) == 0, proc.stderr.read()
    # Hello is idempotent: calls stuck on the frozen node are hedged to the other node, well
    # before their 0.5 s deadline (the sweeper tells them their hedge time came)
    assert done["errors"] == [], done
    assert done["max_latency"] < 0.5 + 0.1, done
    assert done["hedges"] > 0, done
    assert done["calls"] > 100, done
    print(basics, done)
