"""Shared watch: one etcd watch over the whole registry prefix feeding every watched service's cache.

Used by :class:`framework.discovery.Discovery` past ``shared_above`` watched services, with the
per-service rules: list the whole prefix and take its revision R (each watched service's view is
replaced by its part of the list); watch from R+1, routing each event to its service's cache by the
key's service segment (``<prefix><Service>/<host:port>``) and dropping events of services nobody
watches; on any watch trouble - stream closed, compaction, a different cluster, ``idle_resync``
without a message - list again. An etcd error never empties a cache. A service first watched
while the watch runs is listed on its own (its part of the prefix), and the watch resumes from the
revision it had reached, so every cache starts from a full list of its service without the whole
prefix being listed once per service.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Union

import gevent
from gevent import monkey

from .backoff import Backoff
from .errors import EtcdError
from .etcd import Event, WatchStream

if TYPE_CHECKING:
    from .discovery import Discovery, _Watched

log = logging.getLogger(__name__)

Worker = Union[threading.Thread, gevent.Greenlet]

#: how long the shared watch waits for a retired per-service worker (one etcd request at most)
RETIRE_WAIT = 30.0


def spawn(target: Callable[[], None], name: str) -> Worker:
    """A background worker (not started) of the kind this process runs."""
    if monkey.is_module_patched("threading"):
        # a greenlet, not a patched Thread: it lives on in a forked child without threading's
        # bookkeeping, which counts it stopped there
        return gevent.Greenlet(target)
    return threading.Thread(target=target, name=name, daemon=True)


class SharedWatch:
    """The one watch over ``discovery.prefix`` and the worker that routes its events."""

    def __init__(self, discovery: "Discovery", retired: List[Worker]):
        self.discovery = discovery
        self.watch: Optional[WatchStream] = None
        self.revision = 0
        #: the caches the last list covered; events reach only these (a newer one waits for a list)
        self.listed: Dict[str, "_Watched"] = {}
        self.relist = False       # a service joined since the last list
        self.grace_ends: Optional[float] = None   # earliest end of a carried-nodes grace
        self._retired = retired
        self.thread = spawn(self._run, "framework-watch-shared")

    def joined(self) -> None:
        """A service is watched from now on: list again (from any thread)."""
        self.relist = True
        watch = self.watch
        if watch is not None:
            watch.close()

    def close(self) -> None:
        watch = self.watch
        if watch is not None:
            watch.close()

    def _list(self) -> Optional[str]:
        d = self.discovery
        self.relist = False
        listed = dict(d._watched)   # before the list: a later join sets relist again
        revision, kvs = d.etcd.get_prefix(d.prefix)
        cluster = d.etcd.cluster_id
        parts: Dict[str, list] = {name: [] for name in listed}
        for kv in kvs:
            part = parts.get(self._service(kv.key))
            if part is not None:
                part.append(kv)
        for name, watched in listed.items():
            watched.apply_list(revision, cluster, parts[name])
        self.listed, self.revision = listed, revision
        self.grace_ends = min((w.carry_until for w in listed.values() if w.carried), default=None)
        return cluster

    def _list_joined(self) -> Optional[str]:
        """Only the services watched since the last list, each listed on its own: a gateway that
        meets 1,000 services one by one must not list the whole prefix 1,000 times. The watch
        then resumes from the revision it had reached, so the events between that and a new
        service's list are applied again on top of it - in order, ending where the list was."""
        d = self.discovery
        self.relist = False
        for name, watched in list(d._watched.items()):
            if name not in self.listed:
                revision, kvs = d.etcd.get_prefix(f"{d.prefix}{name}/")
                watched.apply_list(revision, d.etcd.cluster_id, kvs)
                self.listed[name] = watched
        return d.etcd.cluster_id

    def _service(self, key: str) -> str:
        return key[len(self.discovery.prefix):].split("/", 1)[0]

    def _timeout(self) -> float:
        idle = self.discovery.idle_resync
        if self.grace_ends is None:
            return idle
        return max(0.05, min(idle, self.grace_ends - time.monotonic()))

    def _route(self, revision: int, events: List[Event]) -> None:
        by_service: Dict[str, List[Event]] = {}
        for ev in events:
            by_service.setdefault(self._service(ev.kv.key), []).append(ev)
        for name, evs in by_service.items():
            watched = self.listed.get(name)
            if watched is not None:   # nobody watches the others: not cached
                watched.apply_events(revision, evs)

    def _follow(self, watch: WatchStream, cluster: Optional[str]) -> None:
        """Apply the watch's events until it fails, the cluster changes or a grace ends."""
        stream = iter(watch)
        try:
            for revision, events, event_cluster in stream:
                if event_cluster and cluster and event_cluster != cluster:
                    log.warning("etcd cluster changed under the shared watch; listing again")
                    return
                if self.grace_ends is not None and time.monotonic() >= self.grace_ends:
                    return   # a full list drops the carried nodes that never came back
                if events:
                    self.revision = revision
                    self._route(revision, events)
        finally:
            stream.close()

    def _run(self) -> None:
        d = self.discovery
        for worker in self._retired:   # their last list must not land after ours
            worker.join(RETIRE_WAIT)
        self._retired = []
        backoff = Backoff(base=0.05, cap=2.0)
        while not d.closed:
            try:
                # a join closed the watch on purpose: list the new services alone; anything
                # else (the first list, a lost or idle watch) lists the whole prefix
                joined = self.relist and self.listed and self.revision
                cluster = self._list_joined() if joined else self._list()
                pid = os.getpid()
                self.watch = watch = d.etcd.watch(d.prefix, self.revision + 1, self._timeout())
                if os.getpid() != pid:   # forked meanwhile, not yet killed: the parent's socket
                    _drop_inherited(watch)
                    continue
                if d.closed or self.relist:
                    end(watch)
                    continue
                backoff.reset()
                self._follow(watch, cluster)
            except (socket.timeout, TimeoutError):
                log.debug("shared watch idle for %ss; listing again", d.idle_resync)
            except EtcdError as exc:
                if d.closed:
                    return
                if not self.relist:   # a join closed the watch on purpose: list at once
                    delay = backoff.next()
                    log.warning("shared watch lost (%s); listing again in %.2fs", exc, delay)
                    d._stop.wait(delay)
            except Exception:  # never let the caches die silently
                if d.closed:
                    return
                log.exception("shared watch failed; listing again")
                d._stop.wait(backoff.next())
            if not self.relist:
                for watched in list(self.listed.values()):
                    watched.resyncs += 1

    def _after_fork(self, restart: bool) -> None:
        """In a forked child: as :meth:`framework.discovery._Watched._after_fork`, for the one watch."""
        if isinstance(self.thread, gevent.Greenlet):
            self.thread.kill(block=False)
        watch, self.watch = self.watch, None
        if watch is not None:
            _drop_inherited(watch)
        self._retired = []
        if restart:
            self.thread = spawn(self._run, "framework-watch-shared")
            self.thread.start()


def end(watch: WatchStream) -> None:
    """Close a watch nobody iterates yet: iterating it is what lets go of its connection."""
    watch.close()
    try:
        for _ in watch:
            pass
    except Exception:   # the shut-down stream ends with WatchLost; nothing to report
        pass


def _drop_inherited(watch: WatchStream) -> None:
    """Close this process's descriptor of an inherited watch's socket, and nothing else: no
    ``shutdown`` (the parent's watch would end too) and no close of its buffered reader (a thread
    lost in the fork may hold that reader's lock, and closing it would wait forever)."""
    conn = getattr(watch, "_conn", None)   # an etcd.Watch's HTTP connection; fakes have none
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    conn.sock = None   # a later close() of the watch must not shut the socket down
    try:
        os.close(sock.detach())   # the socket object no longer owns the descriptor
    except OSError:
        pass
