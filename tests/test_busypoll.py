"""Busy polling (``--busy-poll US``, :mod:`framework.busypoll`): after an event the loop polls
without sleeping for the budget, then sleeps again; a process with nothing to do burns nothing.

The loop test runs gevent's real loop with a socket pair in a process of its own
(tests/busypoll_probe.py), so no hub is left in the test process. The CLI tests run a real gateway
and node with the flag, and read the gateway's CPU time from ``/proc``.
"""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from framework.busypoll import BusyPoll

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_loop_spins_after_events_and_then_sleeps():
    out = subprocess.run([sys.executable, "-m", "tests.busypoll_probe"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["events"] == 5 and seen["spins"] >= 1
    # with busy polling: in the first 9 ms after the last wake-up (the budget is 10 ms) the loop
    # turned again and again without sleeping ...
    early = [t for t in seen["on"] if t < 0.009]
    assert len(early) > 20, f"{len(early)} turns in the first 9 ms: the loop slept"
    # ... and once the budget was spent it slept until the timer at 60 ms (a spin that never
    # stopped would turn hundreds of times in this window)
    late = [t for t in seen["on"] if 0.03 <= t < 0.058]
    assert len(late) < 5, f"{len(late)} turns between 30 and 58 ms: the loop never slept"
    # without it, the loop sleeps at once: a quiet 60 ms takes a handful of turns
    assert len(seen["off"]) < 10, seen["off"]


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
    for i in range(20):   # few: both processes spin through them, on the suite's shared cores
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
