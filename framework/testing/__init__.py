"""Test helpers and a pytest plugin: a real etcd, real served nodes, clients - always torn down -
and the tools to load them, talk to them byte by byte and read their metrics.

Enable it in your own suite with ``pytest_plugins = ["framework.testing"]`` in ``conftest.py``.
Fixtures (:mod:`framework.testing.plugin`):

* ``etcd`` - a fresh single-member etcd (:class:`framework.devetcd.EtcdProcess`) on random loopback
  ports with a temp data dir; ``etcd.endpoint`` is ``"127.0.0.1:<port>"``. It fails loudly when no
  etcd binary is installed; it never skips.
* ``serve_node`` - ``serve_node("pkg.module", etcd=..., ttl=3)`` starts ``python -m framework serve``
  in its own process session and returns a :class:`NodeProcess` once it listens.
* ``serve_gateway`` - ``serve_gateway("--timeout", "2")`` starts ``python -m framework gateway`` on
  the same etcd and returns a :class:`GatewayProcess` (``.address``, ``.post(obj)``, ``.request``).
* ``make_client`` - ``make_client(etcd.endpoint, timeout=5)`` builds a :class:`framework.Client`.
* ``processes`` - the :class:`ProcessGroup` that kills every started process at teardown, also when
  the test fails or pytest is interrupted or sent SIGTERM; ``processes.start_node(module, etcd)``,
  ``start_etcd(**kw)`` and ``start_gateway(etcd, *args)`` start more, on any etcd.
* ``test_network`` - a :class:`TestNetwork` (:mod:`framework.testing.netns`): a private network of
  Linux namespaces on a bridge, with ``add(member)``, ``start_etcd``/``start_node``/``popen``
  inside a member, and real faults (``blackhole``, ``partition``, ``thin``, ``heal``). It needs
  root and iproute2 and fails naming what is missing; it never skips.

Helpers:

* :func:`wait_until` polls a condition with a deadline (never sleep for a condition).
* :class:`Load` - threads calling a function until stopped, every outcome timed (``ok``,
  ``errors``, ``by_result``).
* :class:`RawConnection`, :func:`frame`, :func:`frame_header` - frames and bytes on a node's port,
  as no well-behaved client would send them.
* :func:`http_request` - one plain HTTP request; :func:`post_json` - one JSON-RPC POST.
* :func:`scrape_metrics` and :func:`sample` - ``/metrics`` of a node, a gateway or etcd, parsed.
"""
from ..devetcd import EtcdProcess, cluster, find_binary
from .load import Load, Outcome
from .metrics import sample, scrape_metrics
from .netns import NetworkUnavailable, TestNetwork
from .processes import ForkedChild, GatewayProcess, NodeProcess, ProcessGroup
from .waiting import wait_until
from .wire import RawConnection, frame, frame_header, http_request, post_json

__all__ = ["EtcdProcess", "NodeProcess", "ForkedChild", "GatewayProcess", "ProcessGroup", "wait_until",
           "http_request", "cluster", "find_binary", "Load", "Outcome", "RawConnection", "frame",
           "frame_header", "post_json", "scrape_metrics", "sample", "TestNetwork",
           "NetworkUnavailable"]

try:
    import pytest  # noqa: F401
except ImportError:  # the helpers above work without pytest; only the plugin needs it
    pass
else:
    # pytest finds a plugin's hooks and fixtures among the attributes of the module it names
    from .plugin import (etcd, make_client, pytest_configure, processes,  # noqa: F401
                         serve_gateway, serve_node, test_network)
