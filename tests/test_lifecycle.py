"""Issue 4 (lead part): rolling deploys lose no call; a hung node is routed around; deadlines travel."""
import threading
import time

import pytest

import framework
from framework.testing import Load, sample, scrape_metrics, wait_until


def test_rolling_restart_of_every_node_loses_no_non_idempotent_call(serve_node, make_client):
    nodes = [serve_node("tests.services", ttl=10) for _ in range(3)]
    client = make_client(timeout=10)
    wait_until(lambda: len(client.nodes("WorkService")) == 3)
    with Load(lambda: client.WorkService.Work(2), callers=16) as load:
        wait_until(lambda: len(load.ok) > 200, timeout=20)
        for old in list(nodes):
            new = serve_node("tests.services", ttl=10)          # start the replacement
            wait_until(lambda: new.address in client.nodes("WorkService"), timeout=10)
            old.terminate()                                     # then SIGTERM the old node
            assert old.wait(20) == 0
            before = len(load.ok)
            wait_until(lambda: len(load.ok) > before + 100, timeout=20)
            nodes.remove(old)
            nodes.append(new)
        served_by = {pid for _, _, pid in load.ok[-200:]}
    print(f"rolling restart: {len(load.ok)} calls ok, {len(load.errors)} failed")
    assert load.errors == []
    assert served_by <= {n.pid for n in nodes}


def test_a_frozen_node_costs_no_call_at_a_half_second_timeout(serve_node, make_client):
    """Issue 9's frozen-node scenario: one of 3 nodes SIGSTOPped for 6 s under 16 callers with a
    0.5 s timeout. Calls stuck on it are hedged to another node, so none fails or runs late."""
    nodes = [serve_node("tests.services", ttl=30) for _ in range(3)]   # the lease stays valid
    client = make_client(timeout=0.5)
    wait_until(lambda: len(client.nodes("WorkService")) == 3)
    frozen = nodes[0]
    with Load(lambda: client.WorkService.Read(1), callers=16) as load:
        wait_until(lambda: len(load.ok) > 200, timeout=20)
        frozen.freeze()
        t_freeze, hedges_before = time.monotonic(), client.hedging.sent
        # the scenario is a 6 s freeze; end it early if a call fails (the assertion below reports)
        wait_until(lambda: time.monotonic() - t_freeze > 6 or load.errors, timeout=8,
                   interval=0.05, message="6 s of freeze")
        during = [r for r in load.ok if r[0] > t_freeze]
        hedges = client.hedging.sent - hedges_before
        frozen.thaw()
        t_thaw = time.monotonic()
        wait_until(lambda: any(r[2] == frozen.pid and r[0] > t_thaw for r in load.ok), timeout=20,
                   message="the thawed node to get traffic again")
        back_after = next(r[0] for r in load.ok if r[2] == frozen.pid and r[0] > t_thaw) - t_thaw
    slow = [r for r in load.ok if r[0] > t_freeze and r[1] > 0.1]
    latest = max(r[1] for r in load.ok + load.errors)
    print(f"frozen 6 s at a 0.5 s timeout: {len(during)} calls ok during the freeze, {hedges} "
          f"hedges, {len(slow)} slower than 100 ms, {len(load.errors)} failed, slowest "
          f"{latest * 1000:.0f} ms; back in traffic {back_after:.2f}s after SIGCONT")
    assert load.errors == []
    assert latest < 0.5 + 0.1, "no call outlives its deadline"
    assert hedges > 0, "calls stuck on the frozen node were hedged"
    assert len(slow) < 50, "calls stop going to a frozen node after a few hedges"
    assert len(during) > 500, "the other two nodes keep serving"


def test_the_callers_deadline_travels_and_a_stale_call_is_skipped(tmp_path, serve_node,
                                                                 make_client):
    # one call at a time on this node, so a second call waits behind a slow first one
    node = serve_node("tests.services", extra_args=["--max-concurrency", "1"])
    client = make_client(timeout=5)
    first = threading.Thread(target=lambda: client.WorkService.Work(800))
    first.start()
    wait_until(lambda: sample(scrape_metrics(node.address, timeout=5),
                              "framework_calls_in_flight") >= 1,
               message="the slow call to occupy the node")
    effects = tmp_path / "charges"
    started = time.monotonic()
    with pytest.raises(framework.Timeout):
        client.call("Ledger.Charge", [str(effects)], timeout=0.3)
    assert time.monotonic() - started < 1.0, "the caller's deadline bounds its wait"
    first.join(10)
    # a later call on the same node runs after the stale one was dequeued...
    assert client.WorkService.Work(1) == node.pid
    # ...and the stale one, whose 0.3 s deadline passed while it queued, never ran
    assert not effects.exists()
