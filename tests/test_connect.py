"""Connecting to a node whose host drops SYNs (as a blackholed or vanished host does): here a
loopback listener whose accept queue is full, so the kernel drops every further SYN and a connect
hangs until its timeout. Calls that need the same connection wait for one connect and share its
outcome; none waits longer than its own time."""
import socket
import threading
import time

import pytest

from framework.errors import NotSent
from framework.pool import Pool


@pytest.fixture
def silent_address():
    """host:port of a listener that takes no more connections (backlog 0, one queued)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    queued = socket.create_connection(listener.getsockname(), timeout=1)
    host, port = listener.getsockname()
    probe = socket.socket()
    probe.settimeout(0.2)
    with pytest.raises(socket.timeout):   # the premise: a connect here hangs
        probe.connect((host, port))
    probe.close()
    yield f"{host}:{port}"
    queued.close()
    listener.close()


def _connect_at_once(pool, address, callers, timeout):
    """``callers`` threads each asking ``pool`` for the connection at once: (seconds, error)."""
    results, start = [], threading.Barrier(callers)

    def one():
        start.wait()
        began = time.monotonic()
        try:
            pool.get(address, timeout)
            results.append((time.monotonic() - began, None))
        except NotSent as exc:
            results.append((time.monotonic() - began, exc))

    threads = [threading.Thread(target=one) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return results


def test_callers_waiting_on_one_connect_share_its_failure(silent_address):
    # 8 callers with 2 s each, connects bounded at 0.3 s: one connect times out and every
    # caller has its answer then (were each to connect in turn, the last would wait 8 x 0.3 s)
    pool = Pool(connect_timeout=0.3)
    results = _connect_at_once(pool, silent_address, 8, timeout=2.0)
    slowest = max(seconds for seconds, _ in results)
    print(f"8 callers on a hanging connect: slowest answered in {slowest:.3f} s")
    assert len(results) == 8 and all(isinstance(error, NotSent) for _, error in results)
    assert slowest < 0.3 + 0.3, results


def test_no_caller_waits_for_a_connect_past_its_own_time(silent_address):
    # connects may take 1 s, but these callers have 0.2 s each: none waits longer
    pool = Pool(connect_timeout=1.0)
    results = _connect_at_once(pool, silent_address, 6, timeout=0.2)
    slowest = max(seconds for seconds, _ in results)
    print(f"6 callers with 0.2 s each on a 1 s connect: slowest answered in {slowest:.3f} s")
    assert len(results) == 6 and all(isinstance(error, NotSent) for _, error in results)
    assert slowest < 0.2 + 0.15, results


def test_a_connect_cut_short_by_its_callers_time_is_not_shared(silent_address):
    # a caller with 0.05 s starts the connect and gives up; one with 2 s that waited for it then
    # makes its own, with the full 0.3 s bound: a short deadline says nothing about the host
    pool = Pool(connect_timeout=0.3)
    results, started = {}, threading.Event()

    def call(name, timeout):
        began = time.monotonic()
        started.set()
        try:
            pool.get(silent_address, timeout)
        except NotSent as exc:
            results[name] = (time.monotonic() - began, exc)

    short = threading.Thread(target=call, args=("short", 0.05))
    short.start()
    started.wait(1)
    long = threading.Thread(target=call, args=("long", 2.0))
    long.start()
    short.join(3)
    long.join(3)
    print(f"short caller answered in {results['short'][0]:.3f} s, the other in "
          f"{results['long'][0]:.3f} s")
    assert results["short"][0] < 0.05 + 0.1
    assert 0.3 - 0.05 <= results["long"][0] < 0.05 + 0.3 + 0.2, results
