"""The client in a gevent-patched process: waiting calls hold a Waiter, and one sweeper greenlet per
connection enforces deadlines and detects a frozen node (tests/green_probe.py runs the calls)."""
import json
import subprocess
import sys
import threading

from framework.testing import wait_until


def test_deadlines_and_a_frozen_node_in_a_patched_client(etcd, serve_node, processes):
    first = serve_node("tests.services")
    proc = subprocess.Popen([sys.executable, "tests/green_probe.py", etcd.endpoint],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)

    class Kill:
        def close(self):
            proc.kill()
    processes.add(Kill())
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    phase = lambda name: next((m for m in map(json.loads, list(lines))  # noqa: E731
                               if m["phase"] == name), None)
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
    # Hello is idempotent: calls stuck on the frozen node are abandoned after an unanswered ping
    # (stall_after 0.5 s, so about 1 s) and re-sent to the other node, well before the 3 s deadline
    assert done["errors"] == [], done
    assert done["max_latency"] < 2.5, done
    assert done["calls"] > 100, done
    print(basics, done)
