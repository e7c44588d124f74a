"""etcd access: the one package that talks to etcd (its v3 JSON gateway). The rest of the framework
uses :class:`EtcdAPI`; :class:`Etcd` implements it. This module only re-exports:

* :mod:`.config` - :class:`EtcdConfig` and :func:`parse_endpoints`: where etcd is and how to reach it;
* :mod:`.client` - :class:`Etcd`, :class:`Watch` and the interface (:class:`EtcdAPI`,
  :class:`WatchStream`, :class:`KV`, :class:`Event`): the requests;
* :mod:`.connections` - :class:`Connections`: the keep-alive connections the requests travel on.
"""
from ..errors import EtcdError, WatchLost
from .client import KV, Etcd, EtcdAPI, Event, Watch, WatchMessage, WatchStream, prefix_end
from .config import DEFAULT_ENDPOINT, EtcdConfig, parse_endpoints
from .connections import Connections

__all__ = ["Etcd", "EtcdAPI", "EtcdConfig", "Watch", "WatchStream", "WatchMessage", "KV", "Event",
           "Connections", "parse_endpoints", "prefix_end", "DEFAULT_ENDPOINT", "EtcdError",
           "WatchLost"]
