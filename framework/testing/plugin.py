"""The pytest plugin: fixtures that start real processes and always tear them down, and a SIGTERM
handler (installed when pytest configures, not on import) so teardown runs then too."""
from __future__ import annotations

import signal
import threading
from typing import Optional

import pytest

from .netns import TestNetwork
from .processes import GatewayProcess, NodeProcess, ProcessGroup

_all_groups: list = []   # ProcessGroups and TestNetworks: anything closed on SIGTERM


def pytest_configure(config):
    # pytest does not turn SIGTERM into a clean exit; make it run teardown so no process leaks.
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            for group in list(_all_groups):
                group.close()
            if callable(previous):
                previous(signum, frame)
            raise SystemExit(143)

        signal.signal(signal.SIGTERM, on_term)


@pytest.fixture
def processes():
    """The :class:`ProcessGroup` closed at teardown (start your own processes in it)."""
    group = ProcessGroup()
    _all_groups.append(group)
    try:
        yield group
    finally:
        group.close()
        _all_groups.remove(group)


@pytest.fixture
def etcd(processes):
    """A fresh single-member etcd on random loopback ports."""
    return processes.start_etcd()


@pytest.fixture
def serve_node(processes, etcd):
    """``serve_node(module, etcd=None, ttl=3, **kw)``: start a node (default etcd: the fixture's)."""
    def start(module: str, etcd_endpoint: Optional[str] = None, ttl: int = 3, **kw) -> NodeProcess:
        return processes.start_node(module, etcd_endpoint or etcd.endpoint, ttl=ttl, **kw)
    return start


@pytest.fixture
def serve_gateway(processes, etcd):
    """``serve_gateway(*args)``: ``python -m framework gateway`` on the fixture's etcd."""
    def start(*args: str, etcd_endpoint: Optional[str] = None) -> GatewayProcess:
        return processes.start_gateway(etcd_endpoint or etcd.endpoint, *args)
    return start


@pytest.fixture
def make_client(processes, etcd):
    """``make_client(endpoint=None, **kw)``: a framework.Client closed at teardown."""
    from ..client import Client

    def build(endpoint=None, **kw) -> Client:
        return processes.add(Client(etcd=endpoint or etcd.endpoint, **kw))
    return build


@pytest.fixture
def test_network():
    """A :class:`TestNetwork` (namespaces, bridge, tc faults), closed at teardown whatever happens.
    Needs root and iproute2; without them it raises naming what is missing (never skips)."""
    net = TestNetwork()
    _all_groups.append(net)
    try:
        yield net
    finally:
        net.close()
        _all_groups.remove(net)
