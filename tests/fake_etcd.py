"""An in-memory implementation of framework.etcd.EtcdAPI, for fast unit tests of lease and cache
logic only. Every behaviour tested here is also tested against a real etcd elsewhere.
tests/test_etcd_interface.py checks that FakeEtcd and FakeWatch keep matching the interface."""
import queue
import threading

from framework.errors import EtcdError
from framework.etcd import KV, Event, WatchLost


class FakeEtcd:
    def __init__(self):
        self.revision = 1
        self.kvs = {}
        self.leases = {}
        self.down = False
        self.cluster_id = "c1"
        self.endpoints = ["fake:2379"]
        self.watch_starts = []
        self.watchers = []
        self.calls = []
        self._next_lease = 100
        self._lock = threading.Lock()

    def _check(self, name):
        self.calls.append(name)
        if self.down:
            raise EtcdError("etcd unreachable (fake)")

    def _emit(self, event):
        for w in list(self.watchers):
            if event.kv.key.startswith(w.prefix):
                w.q.put((self.revision, [event], self.cluster_id))

    def get_prefix(self, prefix):
        self._check("get_prefix")
        return self.revision, [kv for k, kv in sorted(self.kvs.items()) if k.startswith(prefix)]

    def put(self, key, value, lease=0):
        self._check("put")
        if lease and lease not in self.leases:
            raise EtcdError("requested lease not found")
        with self._lock:
            self.revision += 1
            kv = KV(key, value.encode() if isinstance(value, str) else value, self.revision, lease)
            self.kvs[key] = kv
            self._emit(Event("PUT", kv))
        return self.revision

    def delete(self, key):
        self._check("delete")
        with self._lock:
            if key in self.kvs:
                self.revision += 1
                kv = self.kvs.pop(key)
                self._emit(Event("DELETE", kv._replace(mod_revision=self.revision)))

    def grant(self, ttl):
        self._check("grant")
        self._next_lease += 1
        self.leases[self._next_lease] = ttl
        return self._next_lease

    def keepalive(self, lease):
        self._check("keepalive")
        return self.leases.get(lease, 0)

    def revoke(self, lease):
        self._check("revoke")
        self.expire(lease)

    def expire(self, lease):
        self.leases.pop(lease, None)
        for key, kv in list(self.kvs.items()):
            if kv.lease == lease:
                self.delete(key)

    def watch(self, prefix, start_revision, idle_timeout=30.0):
        self._check("watch")
        self.watch_starts.append(start_revision)
        w = FakeWatch(self, prefix)
        self.watchers.append(w)
        return w

    def break_watches(self):
        for w in list(self.watchers):
            w.q.put(WatchLost("stream closed (fake)"))


class FakeWatch:
    def __init__(self, etcd, prefix):
        self.etcd, self.prefix = etcd, prefix
        self.q = queue.Queue()

    def __iter__(self):
        try:
            while True:
                item = self.q.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            if self in self.etcd.watchers:
                self.etcd.watchers.remove(self)

    def close(self):
        self.q.put(WatchLost("closed"))
