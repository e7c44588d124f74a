"""Sharing a service's watch between the discovery caches of one process.

Every :class:`~framework.discovery.Discovery` keeps caches of its own (snapshots, listeners), but
two of them watching the same service on the same etcd need not each hold a watch stream. etcd's
JSON gateway spends about 0.1 ms of CPU per stream per change, so 250 clients in a process watching
one service would cost it 250 times what one does (go-zero's discov shares in the same way, per
endpoints and key). The first cache of a service on one etcd (same client class, endpoints, user
and TLS context) *leads*: it runs the list-then-watch worker. Later ones *follow*: each view the
leader publishes, a follower publishes too, to its own listeners. A follower that joins takes the
leader's current view at once.

When the leader's Discovery closes (or moves to its prefix-wide watch, :mod:`framework.watching`),
its first follower takes over and starts a worker of its own, from a full list; the others follow
it, and keep their last view meanwhile. ``Discovery(share=False)`` opts out: its caches always
watch on their own.
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:
    from .discovery import _Watched

_lock = threading.Lock()
_leaders: Dict[tuple, "_Watched"] = {}   # (etcd identity, service prefix) -> the cache that leads


def _key(watched: "_Watched") -> Optional[tuple]:
    discovery = watched.discovery
    etcd = discovery.etcd
    endpoints = getattr(etcd, "endpoints", None)
    if not discovery.share or not endpoints:
        return None
    tls = getattr(etcd, "tls", None)
    return (type(etcd), tuple(map(str, endpoints)), getattr(etcd, "username", None),
            None if tls is None else id(tls), watched.prefix)


def follow(watched: "_Watched") -> Optional["_Watched"]:
    """Make ``watched`` follow the cache that leads for its service, if there is one, and return
    that leader (``watched`` must then start no worker, and mirrors the leader's view now, outside
    its Discovery's lock: listeners run there); else ``watched`` leads, and None."""
    key = _key(watched)
    if key is None:
        return None
    with _lock:
        leader = _leaders.get(key)
        if leader is None or leader.discovery.closed:
            _leaders[key] = watched
            return None
        watched.leader = leader
        leader.followers.append(watched)
    return leader


def leave(watched: "_Watched") -> Optional["_Watched"]:
    """``watched`` stops following or leading (its Discovery closed, or watches the whole
    prefix now). Returns the follower that leads in its place, whose worker the caller starts."""
    key = _key(watched)
    with _lock:
        leader, watched.leader = watched.leader, None
        if leader is not None:
            if watched in leader.followers:
                leader.followers.remove(watched)
            return None
        if key is None or _leaders.get(key) is not watched:
            return None
        followers = [f for f in watched.followers if not f.discovery.closed]
        watched.followers = []
        if not followers:
            del _leaders[key]
            return None
        heir = _leaders[key] = followers[0]
        heir.leader = None
        heir.followers = followers[1:]
        for follower in heir.followers:
            follower.leader = heir
    return heir


def _after_fork_in_child() -> None:
    # a thread that held the lock at fork time does not exist here
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
