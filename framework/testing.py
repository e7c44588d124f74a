"""Test helpers and a pytest plugin: a real etcd, real served nodes, clients - always torn down.

Enable it in your own suite with ``pytest_plugins = ["framework.testing"]`` in ``conftest.py``.
Fixtures:

* ``etcd`` - a fresh single-member etcd (:class:`framework.devetcd.EtcdProcess`) on random loopback
  ports with a temp data dir; ``etcd.endpoint`` is ``"127.0.0.1:<port>"``. It fails loudly when no
  etcd binary is installed; it never skips.
* ``serve_node`` - ``serve_node("pkg.module", etcd=..., ttl=3)`` starts ``python -m framework serve``
  in its own process session and returns a :class:`NodeProcess` once it listens.
* ``serve_gateway`` - ``serve_gateway("--timeout", "2")`` starts ``python -m framework gateway`` on
  the same etcd and returns a :class:`GatewayProcess` (``.address``, ``.post(obj)``, ``.request``).
* ``make_client`` - ``make_client(etcd.endpoint, timeout=5)`` builds a :class:`framework.Client`.
* ``processes`` - the :class:`ProcessGroup` that kills every started process at teardown, also when
  the test fails or pytest is interrupted or sent SIGTERM.

:func:`wait_until` polls a condition with a deadline (never sleep for a condition);
:func:`http_request` makes one HTTP request to a node or gateway.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, List, Optional, Sequence

from .devetcd import EtcdProcess, cluster, find_binary

__all__ = ["EtcdProcess", "NodeProcess", "GatewayProcess", "ProcessGroup", "wait_until",
           "http_request", "cluster", "find_binary"]

_READY = re.compile(r"^serving (\S+) on (\S+):(\d+) advertised as (\S+)")
_GATEWAY_READY = re.compile(r"^gateway listening on (\S+):(\d+)")


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.005,
               message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; raise AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def http_request(address: str, method: str, path: str, body=None, headers=None,
                 timeout: float = 20.0):
    """One plain HTTP request to ``"host:port"``; returns ``(status, headers, body bytes)``."""
    import http.client
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class NodeProcess:
    """A ``python -m framework serve`` process. ``address`` is the advertised ``"host:port"``."""

    def __init__(self, module: str, etcd: Optional[str], ttl: int = 10, host: str = "127.0.0.1",
                 port: int = 0, prefix: Optional[str] = None, extra_args: Sequence[str] = (),
                 env: Optional[dict] = None, cwd: Optional[str] = None):
        self.module = module
        self.args = [sys.executable, "-m", "framework", "serve", module, "--host", host,
                     "--port", str(port), "--ttl", str(ttl)]
        if etcd:
            self.args += ["--etcd", etcd]
        if prefix:
            self.args += ["--prefix", prefix]
        self.args += list(extra_args)
        self.env = dict(os.environ, **(env or {}))
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in [cwd or os.getcwd(), self.env.get("PYTHONPATH", "")] if p)
        self.cwd = cwd
        self.proc: Optional[subprocess.Popen] = None
        self.address = ""
        self.services: List[str] = []
        self.log_file = tempfile.NamedTemporaryFile(prefix="framework-node-", suffix=".log",
                                                    delete=False)

    def start(self, timeout: float = 20.0) -> "NodeProcess":
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.log_file,
                                     stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                     start_new_session=True, text=True)
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                m = _READY.match(line)
                if m and not ready.is_set():
                    self.services = m.group(1).split(",")
                    self.address = m.group(4)
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"node {self.module} did not start:\n{self.log()}")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with open(self.log_file.name, "rb") as f:
            return f.read()[-6000:].decode("utf-8", "replace")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no deregistration, no drain - the key stays until its lease expires."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.kill()
        try:
            os.unlink(self.log_file.name)
        except OSError:
            pass


class GatewayProcess:
    """``python -m framework gateway`` on a free port; ``request``/``post`` talk HTTP to it."""

    def __init__(self, etcd: str, *args: str):
        self.args = [sys.executable, "-m", "framework", "gateway", "--host", "127.0.0.1",
                     "--port", "0", "--etcd", etcd, *args]
        self.proc = None
        self.port = 0
        # logs go to a file: an unread stderr pipe would block the gateway once it filled up
        self.log_file = tempfile.NamedTemporaryFile(prefix="framework-gateway-", suffix=".log",
                                                    delete=False)

    def start(self) -> "GatewayProcess":
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.log_file,
                                     stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        line = self.proc.stdout.readline()   # the process prints this line once it listens
        m = _GATEWAY_READY.match(line)
        if not m:
            self.close()
            with open(self.log_file.name, "rb") as f:
                raise RuntimeError(f"gateway did not start: {line!r} {f.read()[-4000:]!r}")
        self.port = int(m.group(2))
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 20.0):
        return http_request(self.address, method, path, body, headers, timeout)

    def post(self, body, **kw):
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        status, headers, data = self.request("POST", "/", body, **kw)
        return status, (json.loads(data) if data else None)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            os.unlink(self.log_file.name)
        except OSError:
            pass


class ProcessGroup:
    """Everything a test started; ``close()`` kills it all (idempotent)."""

    def __init__(self):
        self.items: list = []

    def add(self, item):
        self.items.append(item)
        return item

    def close(self) -> None:
        while self.items:
            item = self.items.pop()
            try:
                item.close()
            except Exception:
                pass


# ---- pytest plugin ------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the helpers above work without pytest
    pytest = None

if pytest is not None:
    _all_groups: List[ProcessGroup] = []

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
        return processes.add(EtcdProcess().start())

    @pytest.fixture
    def serve_node(processes, etcd):
        """``serve_node(module, etcd=None, ttl=3, **kw)``: start a node (default etcd: the fixture's)."""
        def start(module: str, etcd_endpoint: Optional[str] = None, ttl: int = 3, **kw) -> NodeProcess:
            node = NodeProcess(module, etcd_endpoint or etcd.endpoint, ttl=ttl, **kw)
            processes.add(node)
            return node.start()
        return start

    @pytest.fixture
    def serve_gateway(processes, etcd):
        """``serve_gateway(*args)``: ``python -m framework gateway`` on the fixture's etcd."""
        def start(*args: str, etcd_endpoint: Optional[str] = None) -> GatewayProcess:
            return processes.add(GatewayProcess(etcd_endpoint or etcd.endpoint, *args)).start()
        return start

    @pytest.fixture
    def make_client(processes, etcd):
        """``make_client(endpoint=None, **kw)``: a framework.Client closed at teardown."""
        from .client import Client

        def build(endpoint=None, **kw) -> Client:
            return processes.add(Client(etcd=endpoint or etcd.endpoint, **kw))
        return build
