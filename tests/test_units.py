"""Fast unit tests of the pure parts: framing, dispatch, and the lease/cache loops on a fake
etcd (each of these behaviours is also covered against a real etcd in test_core)."""
import json
import time

import msgpack
import pytest

import framework
from framework import protocol
from framework.discovery import Discovery
from framework.dispatch import Dispatcher
from framework.errors import ParseError
from framework.registry import Registration
from framework.testing import wait_until
from tests.fake_etcd import FakeEtcd
from tests.services import HelloService


# ---- framing ------------------------------------------------------------------------------------

def test_frames_split_across_arbitrary_reads():
    frames = b"".join(protocol.pack({"id": i, "x": "y" * i}) for i in range(50))
    reader = protocol.FrameReader()
    got = []
    for i in range(0, len(frames), 7):
        got += [protocol.unpack_body(b) for b in reader.feed(frames[i:i + 7])]
    assert [g["id"] for g in got] == list(range(50))
    assert reader.buffered == 0


def test_oversized_or_empty_declared_length_is_refused_before_buffering():
    reader = protocol.FrameReader(max_frame=1024)
    with pytest.raises(protocol.FrameTooLarge):
        reader.feed(b"\xff\xff\xff\xff" + b"x" * 10)
    assert reader.buffered == 0
    with pytest.raises(protocol.FrameTooLarge):
        protocol.FrameReader().feed(b"\x00\x00\x00\x00")


def test_ext_types_and_garbage_are_parse_errors():
    with pytest.raises(ParseError):
        protocol.unpack_body(msgpack.packb(msgpack.ExtType(5, b"abc")))
    with pytest.raises(ParseError):
        protocol.unpack_body(b"\xc1\xc1\xc1")


# ---- dispatch -----------------------------------------------------------------------------------

def req(method, params=(), rid=1, **extra):
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": list(params), **extra}


def test_dispatch_reaches_only_public_methods_of_the_subclass():
    d = Dispatcher([HelloService()])
    assert d.handle(req("HelloService.Hello", ["x"]))["result"] == "hello:x"
    for name in ("_private", "__class__", "__init__", "client", "Hello.__globals__", "__dict__"):
        assert d.handle(req(f"HelloService.{name}"))["error"]["code"] == -32601


def test_dispatch_errors_follow_json_rpc():
    d = Dispatcher([HelloService()])
    assert d.handle(req("HelloService.Hello", ["a", "b"]))["error"]["code"] == -32602
    err = d.handle(req("HelloService.Fail", ["boom"]))["error"]
    assert err == {"code": -32000, "message": "boom", "data": {"type": "ValueError", "message": "boom"}}
    assert d.handle({"jsonrpc": "1.0", "id": 3, "method": "x"})["error"]["code"] == -32600
    assert d.handle({"jsonrpc": "2.0", "id": 3, "method": 5})["error"]["code"] == -32600
    assert d.handle([1])["error"]["code"] == -32600
    # a notification runs but gets no response
    assert d.handle({"jsonrpc": "2.0", "method": "HelloService.Hello", "params": ["x"]}) is None
    # named params
    assert d.handle({"jsonrpc": "2.0", "id": "s", "method": "HelloService.Hello",
                     "params": {"request": "n"}}) == {"jsonrpc": "2.0", "id": "s", "result": "hello:n"}


def test_dispatch_skips_work_whose_deadline_passed():
    d = Dispatcher([HelloService()])
    stale = time.monotonic() - 1.0
    resp = d.handle(req("HelloService.Hello", ["x"], meta={"timeout_ms": 500}), received=stale)
    assert resp["error"]["code"] == -32002
    fresh = d.handle(req("HelloService.Hello", ["x"], meta={"timeout_ms": 5000}), received=stale)
    assert fresh["result"] == "hello:x"


def test_service_names_and_decorator_forms():
    @framework.service("Custom-Name")
    class A(framework.Service):
        def M(self):
            return 1

    from framework.service import spec_of
    assert spec_of(A).name == "Custom-Name" and set(spec_of(A).methods) == {"M"}
    with pytest.raises(TypeError):
        framework.service(object)


# ---- lease loop on a fake etcd -------------------------------------------------------------------

def test_registration_grants_a_new_lease_when_the_old_one_is_gone():
    etcd = FakeEtcd()
    reg = Registration(etcd, {"/services/S/a:1": json.dumps({"address": "a:1"})}, ttl=3)
    reg.start()
    try:
        wait_until(lambda: reg.registered)
        first = reg.lease
        etcd.expire(first)                 # as after SIGSTOP past the TTL, or etcd wiped
        wait_until(lambda: reg.lease not in (0, first), timeout=5)
        assert etcd.kvs["/services/S/a:1"].lease == reg.lease and reg.grants == 2
    finally:
        reg.stop()
    assert "/services/S/a:1" not in etcd.kvs, "stop() revokes, removing the key at once"


def test_registration_never_gives_up_while_etcd_is_down():
    etcd = FakeEtcd()
    etcd.down = True
    reg = Registration(etcd, {"/services/S/a:1": "{}"}, ttl=3)
    reg.start()
    try:
        wait_until(lambda: reg.failures >= 8, timeout=10)   # far past kratos/Kitex's 5 tries
        assert not reg.registered
        etcd.down = False
        wait_until(lambda: reg.registered, timeout=5)
        assert "/services/S/a:1" in etcd.kvs
    finally:
        reg.stop()


# ---- watched cache on a fake etcd ----------------------------------------------------------------

def test_cache_lists_then_watches_from_the_next_revision_and_survives_errors():
    etcd = FakeEtcd()
    etcd.put("/services/S/a:1", json.dumps({"address": "a:1"}))
    d = Discovery(etcd)
    try:
        assert [n.address for n in d.nodes("S", wait=5)] == ["a:1"]
        wait_until(lambda: etcd.watch_starts)
        assert etcd.watch_starts == [etcd.revision + 1]
        etcd.put("/services/S/b:2", json.dumps({"address": "b:2"}))
        wait_until(lambda: len(d.nodes("S")) == 2)
        etcd.delete("/services/S/a:1")
        wait_until(lambda: [n.address for n in d.nodes("S")] == ["b:2"])
        # etcd goes away: the stream breaks and re-listing fails - the last good view stays
        etcd.down = True
        etcd.break_watches()
        wait_until(lambda: etcd.calls.count("get_prefix") >= 3, timeout=10)
        assert [n.address for n in d.nodes("S")] == ["b:2"]
        # while it was away a node left; on return the full list converges on the truth
        etcd.down = False
        etcd.delete("/services/S/b:2")
        etcd.put("/services/S/c:3", "c:3")   # the reference article's plain host:port value
        wait_until(lambda: [n.address for n in d.nodes("S")] == ["c:3"], timeout=10)
    finally:
        d.close()


# ---- node health -----------------------------------------------------------------------------------

def test_a_node_failing_far_more_often_than_its_peers_is_ejected_at_the_end_of_a_window():
    from framework.health import Health
    health = Health(window=1.0, min_calls=20, failure_rate=0.2)
    t = 100.0
    for i in range(40):   # a fails every third call (33%), never three in a row; b and c never
        t += 0.02
        health.record("a", i % 3 != 0, now=t)
        health.record("b", True, now=t)
        health.record("c", True, now=t)
    health.record("b", False, now=t + 1.0)  # the first failure after the window judges it
    assert health.rate_ejections == 1
    assert not health.usable("a", t + 1.1) and health.usable("b", t + 1.1)
    assert health.usable("a", t + 1.6)      # back after the first backoff (0.5 s)


def test_failure_rate_ejection_spares_a_cluster_that_fails_everywhere():
    from framework.health import Health
    health = Health(window=1.0, min_calls=20, failure_rate=0.2)
    t = 100.0
    for i in range(40):   # every node fails a third of its calls: nobody is an outlier
        t += 0.02
        for node in "abc":
            health.record(node, i % 3 != 0, now=t)
    health.record("a", False, now=t + 1.0)
    assert health.rate_ejections == 0


# ---- retry budget ------------------------------------------------------------------------------------

def test_retry_budget_allows_a_tenth_of_the_calls_plus_a_floor_and_saves_up_for_a_burst():
    from framework.budget import RetryBudget
    budget = RetryBudget(ratio=0.1, floor=10.0, burst=20.0)
    t = budget._stamp
    assert sum(budget.withdraw(t) for _ in range(30)) == 20        # the burst, then nothing
    budget.calls += 100                                          # 100 calls earn 10 retries
    assert sum(budget.withdraw(t) for _ in range(30)) == 10
    assert sum(budget.withdraw(t + 1.0) for _ in range(30)) == 10  # a second earns the floor
    budget.calls += 5000           # 500 retries earned, 10 more by the floor: a busy client's
    assert sum(budget.withdraw(t + 2.0) for _ in range(1000)) == 510   # savings pass the burst
    assert budget.refused == (30 - 20) + (30 - 10) + (30 - 10) + (1000 - 510)


def test_hedge_delay_follows_the_recent_p99_with_a_floor_and_half_the_time_left():
    from framework.hedging import Hedging
    policy = Hedging(quantile=0.99, floor=0.0015, window=1.0, min_samples=20)
    tail = policy.tail()
    assert tail.hedge_at(100.0, 0.5) == 100.25, "no estimate yet: half the time left"
    now = 100.0
    for i in range(1000):   # 1% of the calls take 80 ms, the rest 2 ms: the p99 is 2 ms
        tail.add(0.080 if i % 100 == 0 else 0.002, now)
        now += 0.0005
    assert 0.002 <= tail.delay < 0.0025, tail.delay
    for i in range(3000):   # then 5% are slow: the p99 moves up to them within a few windows
        tail.add(0.080 if i % 20 == 0 else 0.002, now)
        now += 0.001
    assert 0.08 <= tail.delay < 0.1, tail.delay
    assert tail.hedge_at(now, 0.1) == now + 0.05, "never later than half the time left"
    for _ in range(10000):   # all fast again: within 10 windows the estimate forgets them
        tail.add(0.0005, now)
        now += 0.001
    assert tail.delay == 0.0015, "the floor"


def test_a_backup_that_wins_teaches_the_hedge_delay_its_own_latency_not_the_wait_before_it():
    """A node goes silent and every tenth call is won by its backup, 2 ms after the backup left:
    the delay stays at the 2 ms an attempt takes (were the wait before the backup counted, the
    p99 would climb by the delay itself each window, up to half the time left)."""
    from types import SimpleNamespace
    from framework import racing
    from framework.budget import RetryBudget
    from framework.health import Health
    from framework.hedging import Hedging
    tail = Hedging(window=0.01, floor=0.001).tail()
    client = SimpleNamespace(health=Health(), budget=RetryBudget(), hedging=Hedging())
    route, primary = SimpleNamespace(tail=tail), SimpleNamespace(probe=lambda: None)
    silent, other = SimpleNamespace(address="10.0.0.3:7001"), SimpleNamespace(address="b:1")
    calls, end = 0, time.monotonic() + 0.3   # 30 windows
    while time.monotonic() < end:
        now = time.monotonic()
        calls += 1
        if calls % 10 or tail.delay == float("inf"):
            tail.add(0.002, now)   # an answer from a live node, recorded by the client
            continue
        hedged_at = now - 0.002   # the backup's answer came 2 ms after it was sent
        backup = (other, None, 2, None, hedged_at)
        won, _ = racing.settle(client, 1, {"result": 1}, backup, silent, primary, route, None)
        assert won
    assert client.hedging.won > 100, client.hedging.won
    assert 0.002 <= tail.delay < 0.003, tail.delay


def test_a_burst_of_failures_is_one_ejection_and_an_answer_resets_the_backoff():
    from framework.health import Health
    health = Health(eject_threshold=3, eject_base=0.5, eject_cap=10.0)
    for _ in range(16):   # 16 calls in flight fail at the same moment
        health.record("a:1", False, False, 100.0)
    assert not health.usable("a:1", 100.4) and health.usable("a:1", 100.5), "0.5 s, not 10 s"
    for _ in range(3):    # back, and failing again: twice as long
        health.record("a:1", False, False, 100.6)
    assert not health.usable("a:1", 101.5) and health.usable("a:1", 101.6)
    health.record("a:1", True, False, 101.7)   # one answer: the next ejection starts short again
    for _ in range(3):
        health.record("a:1", False, False, 101.8)
    assert health.usable("a:1", 102.3)


def test_an_attempt_the_deadline_cut_short_does_not_hide_the_error_before_it():
    from framework.client import _telling
    from framework.errors import NotSent
    cert = NotSent("cannot connect to n:1: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    cut = NotSent("cannot connect to n:1: timed out")
    now = time.monotonic()
    assert _telling(cert, cut, deadline=now - 0.001) is cert   # the deadline ended that attempt
    assert _telling(cert, cut, deadline=now + 5) is cut        # it failed in its own time
    assert _telling(None, cut, deadline=now - 0.001) is cut    # nothing better to say
