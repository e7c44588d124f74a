"""Registration: a node's keys in etcd, on a lease that is kept alive for as long as the node lives.

The loop is the reference's, made real (go-zero's ``discov.Publisher`` does the same):

1. grant a lease with the node's TTL and put every key on it;
2. refresh the lease every TTL/3;
3. if etcd answers that the lease is gone (TTL 0: the node was frozen past its TTL, or etcd was
   replaced by an empty one), grant a **new** lease and put the keys again, at once;
4. once per TTL, read the keys back and put any that is missing or changed (an operator's
   ``etcdctl del``, a restore from an old snapshot): whatever made etcd disagree with the node,
   the node's registration is whole again within one TTL;
5. if etcd cannot be reached, retry with jittered backoff capped at TTL/3 - forever. There is no
   retry limit: a node that gives up vanishes for good while still healthy.

``stop()`` revokes the lease, which removes every key at once so watchers drop the node within
milliseconds instead of a TTL later.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Optional

from .backoff import Backoff
from .errors import EtcdError
from .etcd import EtcdAPI

log = logging.getLogger(__name__)


class Registration:
    """Keeps ``entries`` (key -> value) in etcd under one lease. Safe to run in a thread or greenlet."""

    def __init__(self, etcd: EtcdAPI, entries: Dict[str, str], ttl: int = 10,
                 on_change: Optional[Callable[["Registration"], None]] = None):
        if ttl < 2:
            raise ValueError("ttl must be at least 2 seconds")
        self.etcd = etcd
        self.entries = dict(entries)
        self.ttl = int(ttl)
        self.on_change = on_change
        self.lease = 0
        self.rounds = 0          # keepalives since the last registration
        self.restores = 0        # keys put back after they went missing from etcd
        self.registered = False
        self.grants = 0          # leases granted so far; more than one means re-registrations
        self.failures = 0        # etcd errors seen (consecutive ones are retried forever)
        self._cluster: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="framework-registration", daemon=True)
        self._thread.start()

    def wait_registered(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.registered and time.monotonic() < deadline:
            self._stop.wait(0.01)
        return self.registered

    def _set(self, registered: bool) -> None:
        if registered != self.registered:
            self.registered = registered
            if self.on_change:
                self.on_change(self)

    def _register(self) -> None:
        lease = self.etcd.grant(self.ttl)
        for key, value in self.entries.items():
            self.etcd.put(key, value, lease=lease)
        self.lease = lease
        self.rounds = 0
        self._cluster = self.etcd.cluster_id
        self.grants += 1
        log.info("registered %s on lease %x (ttl %ss, grant #%d)",
                 ", ".join(self.entries), lease, self.ttl, self.grants)
        self._set(True)

    def _run(self) -> None:
        backoff = Backoff(base=0.1, cap=max(0.5, self.ttl / 3))
        interval = self.ttl / 3
        while not self._stop.is_set():
            try:
                if not self.lease:
                    self._register()
                else:
                    left = self.etcd.keepalive(self.lease)
                    if left <= 0:
                        log.warning("lease %x is gone (expired or etcd replaced); registering again",
                                    self.lease)
                        self.lease = 0
                        self._set(False)
                        continue
                    if self.etcd.cluster_id != self._cluster:
                        # a different cluster answered: our lease id might collide there; start over
                        log.warning("etcd cluster changed; registering again")
                        self.lease = 0
                        continue
                    self.rounds += 1
                    if self.rounds % 3 == 0:   # every third keepalive: once per TTL
                        self._restore_missing()
                    self._set(True)
                backoff.reset()
                delay = interval
            except EtcdError as exc:
                self.failures += 1
                delay = backoff.next()
                log.warning("registry unreachable (%s); retrying in %.2fs", exc, delay)
            self._stop.wait(delay)

    def _restore_missing(self) -> None:
        """Put back every key that is not in etcd as this node wrote it, on this node's lease."""
        for key, value in self.entries.items():
            _, kvs = self.etcd.get_prefix(key)
            want = value.encode() if isinstance(value, str) else value
            if not any(kv.key == key and kv.value == want and kv.lease == self.lease for kv in kvs):
                self.etcd.put(key, value, lease=self.lease)
                self.restores += 1
                log.warning("registration %s was missing or changed in etcd; put it back", key)

    def replace(self, entries: Dict[str, str]) -> None:
        """New entries (a reloaded node's records): put them on the current lease, delete the keys
        that are gone. Without a lease yet, the next registration puts them."""
        old, self.entries = self.entries, dict(entries)
        if not self.lease:
            return
        try:
            for key, value in self.entries.items():
                if old.get(key) != value:
                    self.etcd.put(key, value, lease=self.lease)
            for key in set(old) - set(self.entries):
                self.etcd.delete(key)
        except EtcdError as exc:   # the once-per-TTL check puts them back
            log.warning("could not update the registration now (%s); retrying within %ss", exc,
                        self.ttl)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the keepalive loop and revoke the lease, removing the keys at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        lease, self.lease = self.lease, 0
        if lease:
            try:
                self.etcd.revoke(lease)
                log.info("deregistered %s (lease %x revoked)", ", ".join(self.entries), lease)
            except EtcdError as exc:
                log.warning("could not revoke lease %x (%s); keys expire within %ss", lease, exc,
                            self.ttl)
        self._set(False)
