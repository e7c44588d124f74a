"""Sharing a service's watch between the discovery caches of one process (framework.sharing): real
etcd, records put directly; every cache is a Discovery on an etcd client of its own, and the
watches each client opened are counted."""
from framework import record
from framework.discovery import Discovery
from framework.etcd import Etcd
from framework.testing import wait_until
from tests.test_shared_watch import PREFIX, CountingEtcd, _addresses


def _put(store: Etcd, port: int) -> str:
    address = f"127.0.0.1:{port}"
    store.put(record.key(PREFIX, "Svc", address), record.encode({"address": address}))
    return address


def _caches(etcd, processes, count, share=True):
    clients = [CountingEtcd(etcd.endpoint) for _ in range(count)]
    caches = [processes.add(Discovery(client, PREFIX, share=share)) for client in clients]
    seen = [[] for _ in caches]
    for cache, changes in zip(caches, seen):
        cache.subscribe(lambda service, added, removed, snapshot, changes=changes:
                        changes.append(([n.address for n in added], [n.address for n in removed])))
        cache.watch("Svc")
    wait_until(lambda: all(c.ready("Svc") for c in caches), message="every cache listed")
    return clients, caches, seen


def test_the_caches_of_a_process_share_one_watch_and_each_sees_every_change(etcd, processes):
    store = Etcd(etcd.endpoint)
    clients, caches, seen = _caches(etcd, processes, 6)
    a = _put(store, 1001)
    wait_until(lambda: all(_addresses(c, "Svc") == {a} for c in caches), message="the put")
    store.delete(record.key(PREFIX, "Svc", a))
    wait_until(lambda: all(_addresses(c, "Svc") == set() for c in caches), message="the delete")
    assert sum(c.opened for c in clients) == 1, [c.opened for c in clients]
    # each cache's own listeners heard both changes, whichever cache watched
    assert all(changes == [([a], []), ([], [a])] for changes in seen), seen


def test_when_the_cache_that_watches_closes_another_takes_over(etcd, processes):
    store = Etcd(etcd.endpoint)
    clients, caches, _ = _caches(etcd, processes, 3)
    leader, = wait_until(lambda: next(((i,) for i, c in enumerate(clients) if c.opened), None),
                         message="the watch to open")
    caches[leader].close()
    rest = [c for i, c in enumerate(caches) if i != leader]
    a = _put(store, 1002)
    wait_until(lambda: all(_addresses(c, "Svc") == {a} for c in rest), message="the put")
    wait_until(lambda: sum(c.open for c in clients) == 1, message="one watch streaming")
    assert sum(c.opened for c in clients) == 2, [c.opened for c in clients]


def test_share_false_gives_each_cache_its_own_watch(etcd, processes):
    store = Etcd(etcd.endpoint)
    clients, caches, _ = _caches(etcd, processes, 3, share=False)
    a = _put(store, 1003)
    wait_until(lambda: all(_addresses(c, "Svc") == {a} for c in caches), message="the put")
    assert [c.opened for c in clients] == [1, 1, 1]


def test_a_cache_that_joins_later_has_the_current_view_at_once(etcd, processes):
    store = Etcd(etcd.endpoint)
    clients, caches, _ = _caches(etcd, processes, 1)
    a = _put(store, 1004)
    wait_until(lambda: _addresses(caches[0], "Svc") == {a}, message="the put")
    late = processes.add(Discovery(CountingEtcd(etcd.endpoint), PREFIX))
    heard = []   # a listener may look at another service: the view arrives outside any lock
    late.subscribe(lambda service, added, removed, snapshot: heard.append(late.nodes("Other")))
    assert {n.address for n in late.nodes("Svc", wait=0)} == {a} and late.ready("Svc")
    assert heard == [()]
