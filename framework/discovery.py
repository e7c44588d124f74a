"""Discovery: a watched, in-memory cache of each service's live nodes.

For each service, on first use, one background worker (a thread in a plain program, a greenlet in a
gevent-patched one - it uses whatever ``threading`` the process has, so it keeps running while the
caller blocks in ``time.sleep`` or sits in another thread):

1. lists ``<prefix><Service>/`` and takes the answer's revision R;
2. watches the same prefix from R+1, so no event can fall in the gap, applying PUT/DELETE in place;
3. on any watch failure - stream closed, etcd restarted, compaction, a different cluster answering,
   or ``idle_resync`` seconds with no message at all (a silently dead stream) - goes back to 1.

While etcd is unreachable the last good view is kept: a registry error never empties the cache.
A full list replaces the view wholesale, so after etcd is replaced the cache converges on the truth;
nodes the new etcd does not list yet are kept for ``replace_grace`` seconds while they register again.
Callers only read immutable snapshots; they never touch etcd.

Past ``shared_above`` watched services the per-service workers stop and one shared worker
(:mod:`framework.watching`) does 1-3 for the whole prefix, routing each event to its service's cache,
so a process watching a thousand services holds one watch connection, not a thousand. And the
caches of several Discovery objects in one process (several clients) share one worker per service
and etcd (:mod:`framework.sharing`): the others publish what it publishes.

In a forked child the cache lives on: the snapshots are kept, so calls work at once, and each
watched service (past ``shared_above``: the shared watch) gets a new worker that starts again at 1.
The inherited watch's socket is the parent's too: the child closes its copy only (``shutdown``
would end the parent's watch). In a plain program the worker threads did not survive the fork (the
locks they may have held are replaced); in a gevent-patched one the worker greenlets did, and are
ended before they read the parent's bytes.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from typing import Callable, Dict, List, Optional, Tuple, Union

import gevent

from . import record, sharing
from .backoff import Backoff
from .errors import EtcdError
from .etcd import KV, EtcdAPI, Event, WatchStream
from .record import Node
from .watching import SharedWatch, _drop_inherited, end, spawn

log = logging.getLogger(__name__)

#: every Discovery not yet collected, for the fork hook at the end of this module
_live: "weakref.WeakSet[Discovery]" = weakref.WeakSet()

DEFAULT_PREFIX = "/services/"

Listener = Callable[[str, List["Node"], List["Node"], Tuple["Node", ...]], None]


class _Watched:
    """The cache of one service prefix and the worker that keeps it current."""

    def __init__(self, discovery: "Discovery", service: str, worker: bool = True):
        self.discovery = discovery
        self.service = service
        self.prefix = f"{discovery.prefix}{service}/"
        self.nodes: Dict[str, Node] = {}
        self.snapshot: Tuple[Node, ...] = ()
        self.ready = threading.Event()     # set after the first successful list
        self.revision = 0
        self.resyncs = 0
        self.cluster: Optional[str] = None
        self.carried: Dict[str, Node] = {}   # nodes kept through an etcd replacement
        self.carry_until = 0.0
        self.watch: Optional[WatchStream] = None
        self.retired = False   # the shared watch took over: this service's worker stops
        #: process-wide sharing (framework.sharing): the cache this one mirrors, or those
        #: mirroring this one; ``version`` counts its views, ``seen`` the leader's last mirrored
        self.leader: Optional["_Watched"] = None
        self.followers: List["_Watched"] = []
        self.version = self.seen = 0
        self.mirror_lock = threading.RLock()
        #: this service's own worker; None while the shared watch keeps the cache
        self.thread: Optional[Union[threading.Thread, gevent.Greenlet]] = (
            self._new_thread() if worker else None)

    def _new_thread(self) -> Union[threading.Thread, gevent.Greenlet]:
        return spawn(self._run, f"framework-watch-{self.service}")

    def _after_fork(self, restart: bool) -> None:
        """In a forked child: let go of the parent's watch and worker, and with ``restart`` start
        a worker of the child's own, from a full list; the snapshot is kept meanwhile."""
        if isinstance(self.thread, gevent.Greenlet):
            # it survived, waiting on a socket the parent shares - maybe mid-request, beyond reach
            # of _drop_inherited: it is ended before the hub lets it read a byte of the parent's
            self.thread.kill(block=False)
        else:   # the thread did not survive; a caller may wait on its Event, never on its lock
            self.ready = _copy_event(self.ready)
        watch, self.watch = self.watch, None
        if watch is not None:
            _drop_inherited(watch)
        # a thread lost between setting ``nodes`` and ``snapshot`` left them apart
        self.snapshot = tuple(sorted(self.nodes.values(), key=lambda n: n.address))
        self.mirror_lock = threading.RLock()
        if restart and not self.retired and self.leader is None:   # a follower's leader restarts
            self.thread = self._new_thread()
            self.thread.start()

    def mirror(self, leader: "_Watched") -> None:
        """Publish ``leader``'s view as this cache's own, unless it is not newer than the last."""
        with self.mirror_lock:
            version = leader.version   # before its nodes: they are at least this new
            nodes = leader.nodes
            if version <= self.seen:
                return
            self.seen = version
            self.revision, self.cluster = leader.revision, leader.cluster
            self._publish(dict(nodes))
            self.ready.set()

    def take_over(self) -> None:
        """This follower leads now (framework.sharing): its own worker, from a full list."""
        if not self.discovery.closed and not self.retired:
            self.thread = self._new_thread()
            self.thread.start()

    def _publish(self, nodes: Dict[str, Node]) -> None:
        old = self.nodes
        self.nodes = nodes
        self.version += 1
        self.snapshot = tuple(sorted(nodes.values(), key=lambda n: n.address))
        added = [n for k, n in nodes.items() if old.get(k) != n]
        removed = [n for k, n in old.items() if k not in nodes]
        if added or removed:
            for n in added:
                log.info("node joined %s %s", self.service, n.address)
            for n in removed:
                log.info("node left %s %s", self.service, n.address)
            for listener in list(self.discovery._listeners):
                try:
                    listener(self.service, added, removed, self.snapshot)
                except Exception:
                    log.exception("discovery listener failed")
        for follower in list(self.followers):
            follower.mirror(self)

    def _list(self) -> Optional[str]:
        d = self.discovery
        revision, kvs = d.etcd.get_prefix(self.prefix)
        cluster = d.etcd.cluster_id
        self.apply_list(revision, cluster, kvs)
        return cluster

    def apply_list(self, revision: int, cluster: Optional[str], kvs: List[KV]) -> None:
        """Replace the view with a full list of this service taken at ``revision``."""
        d = self.discovery
        nodes = {}
        for kv in kvs:
            node = d.records.parse(kv.key, kv.value)
            if node is not None:
                nodes[kv.key] = node
        now = time.monotonic()
        replaced = (self.cluster and cluster and cluster != self.cluster) or revision < self.revision
        if replaced and d.replace_grace > 0:
            # A different (new, empty) etcd answers: another cluster id, or - for a member rebuilt
            # with the same configuration, whose cluster id is the same - a revision that went
            # back. Its list is true but not yet complete: live nodes register again within about
            # TTL/3. Keep the missing ones for replace_grace so callers are not told "no node"
            # meanwhile; a dead one costs one refused connect.
            self.carried = {k: n for k, n in self.nodes.items() if k not in nodes}
            self.carry_until = now + d.replace_grace
            log.warning("etcd was replaced (revision %d -> %d); keeping %d unconfirmed %s nodes "
                        "for %.1fs", self.revision, revision, len(self.carried), self.service,
                        d.replace_grace)
        elif now >= self.carry_until:
            self.carried = {}
        self.cluster = cluster
        self.revision = revision
        self._publish({**self.carried, **nodes})
        self.ready.set()

    def apply_events(self, revision: int, events: List[Event]) -> None:
        """Apply watched PUT/DELETE events of this service in place."""
        nodes = dict(self.nodes)
        for ev in events:
            self.carried.pop(ev.kv.key, None)
            if ev.type == "DELETE":
                nodes.pop(ev.kv.key, None)
            else:
                node = self.discovery.records.parse(ev.kv.key, ev.kv.value)
                if node is not None:
                    nodes[ev.kv.key] = node
                else:
                    nodes.pop(ev.kv.key, None)
        self.revision = revision
        self._publish(nodes)

    def _watch_timeout(self) -> float:
        idle = self.discovery.idle_resync
        if self.carried:  # relist when the grace ends, even on a quiet prefix
            return max(0.05, min(idle, self.carry_until - time.monotonic()))
        return idle

    def _run(self) -> None:
        d = self.discovery
        backoff = Backoff(base=0.05, cap=2.0)
        while not d.closed and not self.retired:
            try:
                cluster = self._list()
                pid = os.getpid()
                self.watch = watch = d.etcd.watch(self.prefix, self.revision + 1,
                                                  self._watch_timeout())
                if os.getpid() != pid:   # forked meanwhile, not yet killed: the parent's socket
                    _drop_inherited(watch)
                    continue
                if d.closed or self.retired:   # retired: the shared watch lists after we return
                    end(watch)
                    return
                backoff.reset()
                stream = iter(watch)
                for revision, events, event_cluster in stream:
                    if event_cluster and cluster and event_cluster != cluster:
                        log.warning("etcd cluster changed under watch of %s; listing again",
                                    self.service)
                        break
                    if self.carried and time.monotonic() >= self.carry_until:
                        break  # grace over: a full list drops the carried nodes that never came back
                    if events:
                        self.apply_events(revision, events)
                stream.close()
            except (socket.timeout, TimeoutError):
                log.debug("watch of %s idle for %ss; listing again", self.service, d.idle_resync)
            except EtcdError as exc:
                if d.closed or self.retired:
                    return
                delay = backoff.next()
                log.warning("watch of %s lost (%s); listing again in %.2fs", self.service, exc, delay)
                d._stop.wait(delay)
            except Exception:  # never let the cache die silently
                if d.closed or self.retired:
                    return
                log.exception("watch of %s failed; listing again", self.service)
                d._stop.wait(backoff.next())
            self.resyncs += 1


class Discovery:
    """Watched caches for any number of services. Several in one process share each service's
    watch on the same etcd (``share=False``: this one watches on its own); one Discovery can also
    serve several clients (``Client(discovery=...)``)."""

    def __init__(self, etcd: EtcdAPI, prefix: str = DEFAULT_PREFIX, idle_resync: float = 30.0,
                 replace_grace: float = 10.0, shared_above: int = 8, share: bool = True):
        self.etcd = etcd
        #: a service's watch is shared with the other caches of this process on the same etcd
        #: (framework.sharing); False: this one's caches always watch on their own
        self.share = share
        #: past this many watched services, one watch over the whole prefix serves them all
        self.shared_above = shared_above
        self._shared: Optional[SharedWatch] = None
        #: after etcd is replaced by another cluster, seconds to keep nodes it does not list yet
        self.replace_grace = replace_grace
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.idle_resync = idle_resync
        #: reads the cached records: only what callers use, tables shared between nodes
        self.records = record.Records()
        self.closed = False
        self._watched: Dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listeners: List[Listener] = []
        _live.add(self)

    def _get(self, service: str) -> _Watched:
        watched = self._watched.get(service)
        if watched is None:
            leader = None
            with self._lock:
                watched = self._watched.get(service)
                if watched is None:
                    if self.closed:
                        raise RuntimeError("discovery is closed")
                    share = self._shared is None and len(self._watched) >= self.shared_above
                    watched = _Watched(self, service, worker=self._shared is None and not share)
                    self._watched[service] = watched
                    if share:
                        self._share()
                    elif self._shared is not None:
                        self._shared.joined()
                    else:
                        leader = sharing.follow(watched)
                        if leader is None:
                            watched.thread.start()
                        else:   # the cache that leads for it runs the worker
                            watched.thread = None
            if leader is not None:
                watched.mirror(leader)   # its view now, if it has one
        return watched

    def _share(self) -> None:
        """Retire every per-service worker and start the one shared watch, which waits for them
        to end before its first list (a late list of theirs must not land after its own)."""
        retired = []
        for watched in self._watched.values():
            _hand_over(watched)   # the prefix-wide watch keeps every cache of this one
            if watched.thread is not None:
                watched.retired = True
                retired.append(watched.thread)
                if watched.watch is not None:
                    watched.watch.close()
        log.info("watching %d services: one watch over %s", len(self._watched), self.prefix)
        self._shared = SharedWatch(self, retired)
        self._shared.thread.start()

    def nodes(self, service: str, wait: float = 0.0) -> Tuple[Node, ...]:
        """The live nodes of ``service`` (an immutable snapshot). On first use, waits up to ``wait``
        seconds for the first list from etcd."""
        watched = self._get(service)
        if not watched.ready.is_set() and wait > 0:
            watched.ready.wait(wait)
        return watched.snapshot

    def ready(self, service: str) -> bool:
        return self._get(service).ready.is_set()

    def watch(self, service: str) -> None:
        """Start watching ``service`` now (otherwise the first call starts it)."""
        self._get(service)

    def subscribe(self, listener: Listener) -> None:
        """``listener(service, added, removed, snapshot)`` runs on the watch worker after each change."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def services(self) -> List[str]:
        """Every service name registered under the prefix right now (a one-off list, not cached)."""
        _, kvs = self.etcd.get_prefix(self.prefix)
        return sorted({kv.key[len(self.prefix):].split("/", 1)[0] for kv in kvs})

    def stats(self) -> Dict[str, dict]:
        return {name: {"nodes": len(w.snapshot), "revision": w.revision, "resyncs": w.resyncs}
                for name, w in list(self._watched.items())}

    def close(self) -> None:
        self.closed = True
        self._stop.set()
        for watched in list(self._watched.values()):
            _hand_over(watched)
            if watched.watch is not None:
                watched.watch.close()
        if self._shared is not None:
            self._shared.close()

    def _after_fork(self) -> None:
        """In a forked child: every watched service gets a watch of the child's own. The locks
        are new: a thread that held one at fork time does not exist here (a greenlet never holds
        one across a switch, so a new one costs the gevent world nothing)."""
        self._lock = threading.Lock()
        self._stop = _copy_event(self._stop)
        for watched in list(self._watched.values()):
            watched._after_fork(restart=not self.closed and self._shared is None)
        if self._shared is not None:
            self._shared._after_fork(restart=not self.closed)


def _hand_over(watched: _Watched) -> None:
    """``watched`` stops sharing its service's watch; a cache that followed it leads instead."""
    heir = sharing.leave(watched)
    if heir is not None:
        heir.take_over()


def _copy_event(event: threading.Event) -> threading.Event:
    """A new Event in the state of ``event`` (whose lock a thread lost in a fork may hold)."""
    copy = threading.Event()
    if event.is_set():
        copy.set()
    return copy


def _after_fork_in_child() -> None:
    for discovery in list(_live):
        try:
            discovery._after_fork()
        except Exception:   # never fail a fork: the cache is kept even if its watches are not
            log.exception("restarting discovery after fork failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
