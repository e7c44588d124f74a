"""Busy polling (``--busy-poll US``, :mod:`framework.busypoll`): after an event the loop polls
without sleeping for the budget, then sleeps again; a process with nothing to do burns nothing.

The loop tests run gevent's real loop in this process, with a socket pair. The CLI tests run a
real gateway and node with the flag, and read the gateway's CPU time from ``/proc``.
"""
import os
import subprocess
import sys
import time

import gevent
import gevent.socket
import pytest

from framework.busypoll import BusyPoll


def _turn_times(seconds: float) -> list:
    """When the loop turned during ``seconds`` of this greenlet's sleep (a timer ends it)."""
    stamps = []
    check = gevent.get_hub().loop.check()
    check.ref = False
    check.start(lambda: stamps.append(time.monotonic()))
    try:
        gevent.sleep(seconds)
    finally:
        check.stop()
    return stamps


def test_the_loop_spins_after_events_and_then_sleeps():
    a, b = gevent.socket.socketpair()
    got = []

    def reader():
        while b.recv(16):
            got.append(time.monotonic())
    reading = gevent.spawn(reader)
    poller = BusyPoll(10_000).start()   # 10 ms: long beside a turn, short beside the test
    try:
        for _ in range(5):
            a.send(b"x")
            gevent.sleep(0.003)   # each wake-up is an event: the budget starts again
        assert len(got) == 5
        # the loop looks at nothing but the socket pair and this greenlet's timer from here: it
        # polls for the budget after the timer that just woke this greenlet, then sleeps
        quiet = time.monotonic()
        turns = _turn_times(0.06)
        spinning = [t for t in turns if t < quiet + 0.009]
        assert len(spinning) > 20, f"{len(spinning)} turns in the first 9 ms: the loop slept"
        gap, before_gap = max((later - earlier, earlier) for earlier, later in zip(turns, turns[1:]))
        assert gap > 0.025, f"the loop never slept: its longest pause was {gap * 1000:.1f} ms"
        assert before_gap - quiet >= 0.009, "the loop slept before the budget was spent"
        # without busy polling, a quiet 60 ms takes a handful of turns
        poller.stop()
        assert len(_turn_times(0.06)) < 10
    finally:
        poller.stop()
        a.close()
        reading.join(timeout=5)
        b.close()


def test_no_budget_installs_nothing_and_bad_budgets_are_refused():
    from framework import busypoll
    assert busypoll.install(0) is None
    for bad in (-1, 10_001, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="between 0 and 10000 microseconds"):
            BusyPoll(bad)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_gateway_and_node_with_busy_poll_serve_and_go_quiet(serve_node, serve_gateway):
    serve_node("tests.services", extra_args=["--busy-poll", "300"])
    gateway = serve_gateway("--busy-poll", "300")
    for i in range(200):
        status, body = gateway.post({"jsonrpc": "2.0", "id": i, "method": "HelloService.Hello",
                                     "params": [f"n{i}"]})
        assert (status, body["result"]) == (200, f"hello:n{i}")
    # with no requests the gateway stops spinning: over 2 s it uses a small share of a core
    # (spinning on would use all of it)
    before = _cpu_seconds(gateway.proc.pid)
    time.sleep(2.0)   # the window measured, not a wait for something to happen
    used = _cpu_seconds(gateway.proc.pid) - before
    assert used < 0.5, f"the idle gateway used {used:.2f} s of CPU in 2 s"


@pytest.mark.parametrize("command", [["gateway"], ["serve", "tests.services"]])
def test_a_bad_budget_is_a_usage_error(command):
    out = subprocess.run([sys.executable, "-m", "framework", *command, "--busy-poll", "20000"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--busy-poll: busy-poll budget must be between 0 and 10000 microseconds" in out.stderr
