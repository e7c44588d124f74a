"""Shared watch: past ``Discovery(shared_above=N)`` watched services a process holds one etcd watch
over the whole prefix, and every service's cache stays right (real etcd, records put directly)."""

import os
import statistics
import threading
import time

from framework import record
from framework.discovery import Discovery
from framework.etcd import Etcd, WatchLost
from framework.testing import wait_until
from tests.test_etcd_faults import CuttableProxy

PREFIX = "/services/"


class CountingEtcd(Etcd):
    """An Etcd that counts the watches it opened and those still streaming, records the
    WatchLost errors they ended with, and runs ``gap`` (once, when set) before opening a watch."""

    def __init__(self, endpoint: str, **kw):
        super().__init__(endpoint, **kw)
        self.opened = self.open = self.peak = 0
        self.lost: list = []
        self.gap = None
        self._lock = threading.Lock()

    def watch(self, prefix, start_revision, idle_timeout=30.0):
        gap, self.gap = self.gap, None
        if gap is not None:
            gap(start_revision)
        watch = super().watch(prefix, start_revision, idle_timeout)
        with self._lock:
            self.opened += 1
            self.open += 1
            self.peak = max(self.peak, self.open)
        return _Counted(self, watch)


class _Counted:
    def __init__(self, owner: CountingEtcd, watch):
        self.owner, self.watch = owner, watch

    def __iter__(self):
        try:
            yield from self.watch
        except WatchLost as exc:
            self.owner.lost.append(exc)
            raise
        finally:
            with self.owner._lock:
                self.owner.open -= 1

    def close(self):
        self.watch.close()


def _register(store: Etcd, lease: int, service: str, port: int) -> str:
    address = f"127.0.0.1:{port}"
    store.put(record.key(PREFIX, service, address), record.encode({"address": address}), lease)
    return address


def _addresses(discovery: Discovery, service: str) -> set:
    return {n.address for n in discovery.nodes(service)}


def _twenty(etcd, processes, shared_above=4):
    store = Etcd(etcd.endpoint)
    lease = store.grant(60)
    names = [f"Svc{i}" for i in range(20)]
    for i, name in enumerate(names):
        _register(store, lease, name, 20000 + i)
    client = CountingEtcd(etcd.endpoint)
    discovery = processes.add(Discovery(client, PREFIX, shared_above=shared_above))
    for name in names:
        discovery.watch(name)
    wait_until(lambda: all(_addresses(discovery, n) == {f"127.0.0.1:{20000 + i}"}
                           for i, n in enumerate(names)), message="every service listed")
    return store, lease, client, discovery


def test_twenty_services_share_one_watch_and_every_cache_is_right(etcd, processes):
    store, lease, client, discovery = _twenty(etcd, processes)
    # the 5th service retired the 4 per-service watches: one stream is left
    wait_until(lambda: client.open == 1, message="one watch left")
    seen: list = []
    discovery.subscribe(lambda service, added, removed, snapshot:
                        seen.append((service, [n.address for n in added],
                                     [n.address for n in removed])))
    # a service nobody watches: its events are dropped, not cached
    _register(store, lease, "Unwatched", 30000)
    new = _register(store, lease, "Svc17", 31000)
    wait_until(lambda: new in _addresses(discovery, "Svc17"), message="put reached Svc17")
    store.delete(record.key(PREFIX, "Svc17", "127.0.0.1:20017"))
    wait_until(lambda: _addresses(discovery, "Svc17") == {new}, message="delete reached Svc17")
    assert seen == [("Svc17", [new], []), ("Svc17", [], ["127.0.0.1:20017"])]
    assert "Unwatched" not in discovery.stats()
    # a service first watched in shared mode starts from a full list, still on one watch
    _register(store, lease, "Late", 32000)
    assert discovery.nodes("Late", wait=5) == (discovery.nodes("Late")[0],)
    assert _addresses(discovery, "Late") == {"127.0.0.1:32000"}
    wait_until(lambda: client.open == 1, message="one watch after a join")
    assert _addresses(discovery, "Svc3") == {"127.0.0.1:20003"}
    print(f"\nshared watch: 21 services, {client.open} watch open (peak {client.peak}, "
          f"{client.opened} opened in all: 4 per-service, then shared ones on joins)")
    assert client.peak <= 5


def test_propagation_in_shared_mode(etcd, processes):
    store, lease, client, discovery = _twenty(etcd, processes)
    changed = threading.Event()
    discovery.subscribe(lambda service, added, removed, snapshot:
                        service == "Svc17" and changed.set())
    wait_until(lambda: client.open == 1, message="one watch left")
    took = []
    for i in range(30):
        changed.clear()
        t0 = time.perf_counter()
        _register(store, lease, "Svc17", 40000 + i)
        assert changed.wait(5), "the put never reached the cache"
        took.append(time.perf_counter() - t0)
    took.sort()
    p50, p99 = statistics.median(took), took[-1]
    print(f"\nshared watch propagation over 30 puts: p50 {p50 * 1000:.2f}ms, "
          f"max {p99 * 1000:.2f}ms (put included)")
    assert p50 < 0.05
    assert len(_addresses(discovery, "Svc17")) == 31


def test_compaction_in_shared_mode_relists_and_misses_no_delete(etcd, processes):
    store, lease, client, discovery = _twenty(etcd, processes)
    wait_until(lambda: client.open == 1, message="one watch left")
    gone = record.key(PREFIX, "Svc5", "127.0.0.1:20005")

    def gap(start_revision: int) -> None:
        # while the next watch is not yet open: a delete, then its history compacted away
        store.delete(gone)
        for i in range(10):
            store.put(f"/other/{i}", "x")
        etcd.etcdctl("compact", str(store.get_prefix("/")[0]))

    client.gap = gap
    discovery.watch("Joiner")   # a join: the shared watch lists again and opens a new watch
    wait_until(lambda: not _addresses(discovery, "Svc5"), message="the delete seen after relist")
    assert any(exc.compact_revision > 0 for exc in client.lost), "etcd must have refused the watch"
    assert discovery.stats()["Svc5"]["resyncs"] >= 1
    assert _addresses(discovery, "Svc6") == {"127.0.0.1:20006"}


def test_watch_lost_in_shared_mode_keeps_the_view_then_relists(etcd, processes):
    store = Etcd(etcd.endpoint)
    lease = store.grant(60)
    for i in range(6):
        _register(store, lease, f"Svc{i}", 20000 + i)
    proxy = processes.add(CuttableProxy(etcd.endpoint))
    client = CountingEtcd(proxy.endpoint, timeout=1)
    discovery = processes.add(Discovery(client, PREFIX, shared_above=2))
    for i in range(6):
        discovery.watch(f"Svc{i}")
    wait_until(lambda: all(_addresses(discovery, f"Svc{i}") for i in range(6)))
    # settled: one watch streams and no list or connect is under way (which a cut could miss)
    wait_until(lambda: client.open == 1)
    opened = client.opened
    probe = _register(store, lease, "Svc0", 21000)
    wait_until(lambda: probe in _addresses(discovery, "Svc0"), message="the watch to stream")
    assert client.opened == opened
    proxy.sever()
    store.delete(record.key(PREFIX, "Svc4", "127.0.0.1:20004"))
    joined = _register(store, lease, "Svc4", 21004)
    etcd.etcdctl("compact", str(store.get_prefix("/")[0]))
    # etcd is unreachable from here: the view is kept
    assert _addresses(discovery, "Svc4") == {"127.0.0.1:20004"}
    proxy.heal()
    wait_until(lambda: _addresses(discovery, "Svc4") == {joined}, message="relisted after heal")
    assert all(s["resyncs"] >= 1 for s in discovery.stats().values())
    assert all(_addresses(discovery, f"Svc{i}") for i in range(6))


def test_forked_child_gets_a_shared_watch_of_its_own(etcd, processes):
    store, lease, client, discovery = _twenty(etcd, processes)
    wait_until(lambda: client.open == 1, message="one watch left")
    pid = os.fork()
    if pid == 0:   # the child: the cache is kept, and a put after the fork reaches it
        try:
            ok = "127.0.0.1:20009" in _addresses(discovery, "Svc9")
            wait_until(lambda: "127.0.0.1:50009" in _addresses(discovery, "Svc9"), timeout=5)
            os._exit(0 if ok else 2)
        except BaseException:
            os._exit(1)
    new = _register(store, lease, "Svc9", 50009)
    wait_until(lambda: new in _addresses(discovery, "Svc9"), message="the parent sees the put")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's watch was not ended by the child
    _register(store, lease, "Svc9", 50010)
    wait_until(lambda: "127.0.0.1:50010" in _addresses(discovery, "Svc9"))
