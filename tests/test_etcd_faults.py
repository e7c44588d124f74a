"""etcd trouble, caused for real: etcd down (and back with its data, or empty), history compacted
while a watch was away, and the leader of a real 3-member cluster SIGKILLed under load.

Each test prints the figures that docs/reliability.md quotes (run with ``-s`` to see them).
"""
import functools
import shutil
import socket
import threading
import time

import pytest

import framework
from framework.devetcd import cluster
from framework.etcd import Etcd, WatchLost
from framework.testing import Load, wait_until

TTL = 3


def pid_calls(client):
    """What each caller of the load does: ask a node for its pid (``by_result`` counts per node)."""
    return functools.partial(client.call, "HelloService.Pid", [])


def _keys(etcd: Etcd, prefix: str = "/services/HelloService/") -> dict:
    return {kv.key: kv.lease for kv in etcd.get_prefix(prefix)[1]}


@pytest.mark.parametrize("comeback", ["restart", "wiped"])
def test_etcd_down_calls_go_on_dead_node_routed_around_registrations_come_back(
        comeback, etcd, processes):
    a, b, c = (processes.start_node("tests.services", etcd.endpoint, ttl=TTL) for _ in range(3))
    client = processes.add(framework.Client(etcd=etcd.endpoint, timeout=5))
    client.discovery.replace_grace = TTL   # how long unconfirmed nodes outlive an etcd replacement
    wait_until(lambda: len(client.nodes("HelloService")) == 3, message="three nodes listed")
    with Load(pid_calls(client), join_timeout=10) as load:
        load.wait_calls(200)
        etcd.kill()                      # etcd is gone: no answer at all on its port
        down = time.monotonic()
        load.wait_calls(300)
        before_kill = load.calls
        assert load.by_result.get(c.pid, 0) > 0
        c.kill()                         # a node dies while nobody can tell etcd
        killed = time.monotonic()
        wait_until(lambda: not client.health.usable(c.address, time.monotonic()), timeout=5,
                   message="the dead node to be ejected")
        detected = time.monotonic() - killed
        last = load.by_result.get(c.pid, 0)
        # routed around: C answers no more calls and the others carry on
        load.wait_calls(500)
        # etcd stays down past a TTL: every lease would have expired by now
        wait_until(lambda: time.monotonic() - down > TTL + 1, timeout=3 * TTL)
        assert load.by_result.get(c.pid, 0) == last
        assert client.nodes("HelloService"), "the cached view must survive etcd being down"
        calls_down = load.calls
        # etcd returns: as it was (leases restored) or empty (a new cluster: re-register)
        if comeback == "wiped":
            shutil.rmtree(etcd.data_dir, ignore_errors=True)
        etcd.start()
        back = time.monotonic()
        store = Etcd(etcd.endpoint)
        expected = {f"/services/HelloService/{n.address}" for n in (a, b)}
        wait_until(lambda: set(_keys(store)) == expected, timeout=TTL * 3 + 5,
                   message="A and B registered, C gone")
        registered = time.monotonic() - back
        wait_until(lambda: set(client.nodes("HelloService")) == {a.address, b.address},
                   timeout=10, message="client view converged")
        converged = time.monotonic() - back
        load.wait_calls(200)
    if comeback == "restart":
        # the restored leases are kept alive: unchanged for longer than a TTL after the comeback
        leases = _keys(store)
        end = time.monotonic() + TTL + 0.5
        while time.monotonic() < end:
            assert _keys(store) == leases
            time.sleep(0.2)   # sampling an invariant over a window, not waiting for a condition
    window = load.errors[-1][0] - load.errors[0][0] if load.errors else 0.0
    print(f"\netcd down/{comeback}: {load.calls} calls, {len(load.errors)} failed "
          f"(within {window * 1000:.0f}ms); {calls_down - before_kill} calls after node C was "
          f"SIGKILLed with etcd down, C ejected {detected * 1000:.0f}ms after; etcd down {back - down:.1f}s; registrations back "
          f"{registered:.2f}s and client converged {converged:.2f}s after etcd returned")
    # also for an empty etcd: discovery sees the revision go back and keeps the nodes the new
    # etcd does not list yet for replace_grace, while they register again
    assert load.errors == [], load.errors[:5]


class GapEtcd(Etcd):
    """An Etcd whose first ``watch`` call first runs ``gap(start_revision)``: the moment a watch
    is away (between discovery's list and its watch). Records the WatchLost errors it saw."""

    def __init__(self, endpoint: str, gap):
        super().__init__(endpoint)
        self.gap = gap
        self.lost: list = []

    def watch(self, prefix, start_revision, idle_timeout=30.0):
        gap, self.gap = self.gap, None
        if gap is not None:
            gap(start_revision)
        return _Recorded(super().watch(prefix, start_revision, idle_timeout), self.lost)


class _Recorded:
    def __init__(self, watch, lost):
        self.watch, self.lost = watch, lost

    def __iter__(self):
        try:
            yield from self.watch
        except WatchLost as exc:
            self.lost.append(exc)
            raise

    def close(self):
        self.watch.close()


def test_compaction_while_the_watch_was_away_relists_and_misses_no_delete(etcd, processes):
    a, b = (processes.start_node("tests.services", etcd.endpoint, ttl=TTL) for _ in range(2))
    store = Etcd(etcd.endpoint)
    wait_until(lambda: len(_keys(store)) == 2)
    joined: list = []

    def gap(start_revision: int) -> None:
        # while this watch is not yet open: B leaves (a DELETE), C joins (a PUT), more writes
        # follow, and the history the watch needs is compacted away
        b.terminate()
        wait_until(lambda: f"/services/HelloService/{b.address}" not in _keys(store), timeout=10)
        joined.append(processes.start_node("tests.services", etcd.endpoint, ttl=TTL))
        for i in range(20):
            store.put(f"/other/{i}", "x")
        revision = store.get_prefix("/services/")[0]
        assert revision > start_revision
        etcd.etcdctl("compact", str(revision))

    gapped = GapEtcd(etcd.endpoint, gap)
    client = processes.add(framework.Client(etcd_client=gapped, timeout=5, warmup=0))   # the view, not slow start
    t0 = time.monotonic()
    first = client.nodes("HelloService")   # the list, taken before the gap
    assert set(first) == {a.address, b.address}
    c = wait_until(lambda: joined and joined[0], timeout=30, message="the gap to run")
    wait_until(lambda: set(client.nodes("HelloService")) == {a.address, c.address}, timeout=10,
               message="the client to list again after the compaction")
    print(f"\ncompaction: watch cancelled with compact_revision="
          f"{gapped.lost[0].compact_revision if gapped.lost else None}; view correct "
          f"{time.monotonic() - t0:.2f}s after the first list (gap included)")
    assert gapped.lost and gapped.lost[0].compact_revision > 0, "etcd must have refused the watch"
    assert client.discovery.stats()["HelloService"]["resyncs"] >= 1
    pids = {client.HelloService.Pid() for _ in range(20)}
    assert pids == {a.pid, c.pid}


class CuttableProxy:
    """A TCP proxy to etcd that can cut every connection and refuse new ones (etcd unreachable
    from this client only), then heal."""

    def __init__(self, target: str):
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.cut = False
        self.socks: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            if self.cut:
                down.close()
                continue
            try:
                up = socket.create_connection(self.target, timeout=2)
            except OSError:
                down.close()
                continue
            with self._lock:
                self.socks += [down, up]
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def sever(self) -> None:
        self.cut = True
        with self._lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def heal(self) -> None:
        self.cut = False

    def close(self) -> None:
        self.sever()
        self.listener.close()


def test_watch_stream_lost_then_delete_and_compaction_client_relists_in_full(etcd, processes):
    a, b = (processes.start_node("tests.services", etcd.endpoint, ttl=TTL) for _ in range(2))
    proxy = processes.add(CuttableProxy(etcd.endpoint))
    client = processes.add(framework.Client(etcd=proxy.endpoint, timeout=5))
    wait_until(lambda: set(client.nodes("HelloService")) == {a.address, b.address})
    with Load(pid_calls(client), callers=4, join_timeout=10) as load:
        load.wait_calls(100)
        proxy.sever()              # the watch loses its stream; etcd is unreachable from here
        store = Etcd(etcd.endpoint)
        b.terminate()              # a delete the client cannot see...
        assert b.wait(15) == 0
        # ...a join it cannot see...
        c = processes.start_node("tests.services", etcd.endpoint, ttl=TTL)
        for i in range(20):
            store.put(f"/other/{i}", "x")
        etcd.etcdctl("compact", str(store.get_prefix("/")[0]))   # ...and no history left
        load.wait_calls(200)
        assert b.address in client.nodes("HelloService"), "the view is kept while etcd is away"
        proxy.heal()
        healed = time.monotonic()
        wait_until(lambda: set(client.nodes("HelloService")) == {a.address, c.address},
                   timeout=10, message="a full list after the stream came back")
        relisted = time.monotonic() - healed
        # the node that joined unseen takes calls (few at first: slow start)
        wait_until(lambda: load.by_result.get(c.pid, 0) > 0, timeout=10,
                   message="a call answered by the node that joined while etcd was away")
    print(f"\nwatch lost + compaction: {load.calls} calls, {len(load.errors)} failed; view correct "
          f"{relisted:.2f}s after etcd was reachable again")
    assert load.errors == [], load.errors[:5]
    assert load.by_result[c.pid] > 0 and load.by_result.get(b.pid, 0) > 0


def test_three_member_cluster_leader_sigkilled_under_load(processes):
    members = [processes.add(m) for m in cluster(3)]
    endpoints = ",".join(m.endpoint for m in members)
    nodes = [processes.start_node("tests.services", endpoints, ttl=TTL) for _ in range(3)]
    client = processes.add(framework.Client(etcd=endpoints, timeout=5))
    wait_until(lambda: len(client.nodes("HelloService")) == 3)
    leader = wait_until(lambda: next((m for m in members if m.is_leader()), None), timeout=15,
                        message="a leader")
    rest = [m for m in members if m is not leader]
    store = Etcd([m.endpoint for m in rest])
    leases = _keys(store)
    with Load(pid_calls(client), callers=16, join_timeout=10) as load:
        load.wait_calls(300)
        leader.kill()
        killed = time.monotonic()
        wait_until(lambda: any(m.is_leader() for m in rest), timeout=15, message="a new leader")
        elected = time.monotonic() - killed
        # registrations are kept alive through the survivors: the same leases, past two TTLs
        end = time.monotonic() + 1.5 * TTL
        while time.monotonic() < end:
            assert _keys(store) == leases
            time.sleep(0.2)   # sampling an invariant over a window, not waiting for a condition
        # a node started now (its endpoint list still names the dead member) is discovered
        d = processes.start_node("tests.services", endpoints, ttl=TTL)
        started = time.monotonic()
        wait_until(lambda: d.address in client.nodes("HelloService"), timeout=10,
                   message="new node discovered")
        discovered = time.monotonic() - started
        wait_until(lambda: load.by_result.get(d.pid, 0) > 20, timeout=10,
                   message="new node to take calls")
    print(f"\n3-member cluster, leader SIGKILLed: {load.calls} calls by 16 callers, "
          f"{len(load.errors)} failed; new leader after {elected:.2f}s; registrations kept "
          f"({len(leases)} leases unchanged over {1.5 * TTL}s); new node discovered "
          f"{discovered * 1000:.0f}ms after it printed 'serving'")
    assert load.errors == [], load.errors[:5]
    assert all(load.by_result.get(n.pid, 0) > 0 for n in nodes)
