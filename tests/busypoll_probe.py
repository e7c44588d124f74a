"""Busy polling on a real gevent loop, in a process of its own (tests/test_busypoll.py): prints
one JSON line of when the loop turned while this greenlet slept after a burst of socket events,
with busy polling on (a budget of 10 ms) and then off."""
import json
import time

import gevent
import gevent.socket

from framework.busypoll import BusyPoll

BUDGET_US = 10_000


def turn_times(seconds: float) -> list:
    """When the loop turned during ``seconds`` of this greenlet's sleep (its timer ends it)."""
    stamps = []
    check = gevent.get_hub().loop.check()
    check.ref = False
    check.start(lambda: stamps.append(time.monotonic()))
    try:
        gevent.sleep(seconds)
    finally:
        check.stop()
    return stamps


def main() -> None:
    a, b = gevent.socket.socketpair()
    got = []

    def reader():
        while b.recv(16):
            got.append(time.monotonic())
    reading = gevent.spawn(reader)
    poller = BusyPoll(BUDGET_US).start()
    for _ in range(5):
        a.send(b"x")
        gevent.sleep(0.003)   # each wake-up is an event: the budget starts again
    # from here the loop has nothing to do but this greenlet's timer: it polls for the budget
    # after the wake-up that just resumed this greenlet, then sleeps until the timer
    quiet = time.monotonic()
    on = [t - quiet for t in turn_times(0.06)]
    spins = poller.spins
    poller.stop()
    quiet = time.monotonic()
    off = [t - quiet for t in turn_times(0.06)]
    a.close()
    reading.join(timeout=5)
    b.close()
    print(json.dumps({"events": len(got), "spins": spins, "on": on, "off": off}))


if __name__ == "__main__":
    main()
