"""Real processes for tests: a served node, a gateway, and the group that kills them all.

:class:`NodeProcess` runs ``python -m framework serve`` and :class:`GatewayProcess` runs
``python -m framework gateway``, each in its own session with its log in a temp file;
:class:`ProcessGroup` owns whatever a test started (etcd included) and closes it all.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Sequence

from ..devetcd import EtcdProcess
from .waiting import wait_until
from .wire import http_request, post_json

_READY = re.compile(r"^serving (\S+) on (\S+):(\d+) advertised as (\S+)")
_GATEWAY_READY = re.compile(r"^gateway listening on (\S+):(\d+)")


class NodeProcess:
    """A ``python -m framework serve`` process. ``address`` is the advertised ``"host:port"``."""

    def __init__(self, module: str, etcd: Optional[str], ttl: int = 10, host: str = "127.0.0.1",
                 port: int = 0, prefix: Optional[str] = None, extra_args: Sequence[str] = (),
                 env: Optional[dict] = None, cwd: Optional[str] = None,
                 command_prefix: Sequence[str] = ()):
        self.module = module
        # e.g. ``ip netns exec NAME`` (framework.testing.netns): it execs, so the pid is the node's
        self.command_prefix = list(command_prefix)
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
        self.proc = subprocess.Popen([*self.command_prefix, *self.args], stdout=subprocess.PIPE,
                                     stderr=self.log_file, stdin=subprocess.DEVNULL, env=self.env,
                                     cwd=self.cwd, start_new_session=True, text=True)
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
        """:func:`post_json` to this gateway."""
        return post_json(self.address, body, **kw)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            os.unlink(self.log_file.name)
        except OSError:
            pass


class ProcessGroup:
    """Everything a test started; ``close()`` kills it all (idempotent).

    ``add(item)`` takes anything with a ``close()``; the ``start_*`` methods add a process before
    starting it, so one that fails half-way through its start is cleaned up too.
    """

    def __init__(self):
        self.items: list = []

    def add(self, item):
        self.items.append(item)
        return item

    def start_etcd(self, **kw) -> EtcdProcess:
        """A fresh :class:`EtcdProcess` (``EtcdProcess(**kw)``, e.g. ``tls=certs``), started."""
        return self.add(EtcdProcess(**kw)).start()

    def start_node(self, module: str, etcd: Optional[str], ttl: int = 3, **kw) -> NodeProcess:
        """``python -m framework serve module`` registered in ``etcd`` (endpoints, comma-separated,
        or a URL), returned once it listens. ``kw`` go to :class:`NodeProcess` (``extra_args``,
        ``env``, ``host``, ``prefix``, ``cwd``); ``ttl`` defaults to a test's quick 3 s."""
        return self.add(NodeProcess(module, etcd, ttl=ttl, **kw)).start()

    def start_gateway(self, etcd: str, *args: str) -> GatewayProcess:
        """``python -m framework gateway --etcd etcd *args``, returned once it listens."""
        return self.add(GatewayProcess(etcd, *args)).start()

    def close(self) -> None:
        while self.items:
            item = self.items.pop()
            try:
                item.close()
            except Exception:
                pass


class ForkedChild:
    """``work()`` run in a forked child, which reports its JSON result over a pipe and leaves with
    ``os._exit`` (it never returns into pytest). ``close()`` kills it if it is still running."""

    def __init__(self, work):
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(read)
                try:
                    report = {"result": work()}
                except BaseException as exc:
                    report = {"error": repr(exc)}
                os.write(write, json.dumps(report).encode())
            finally:
                os._exit(0)
        os.close(write)
        self.read, self.status = read, None

    def report(self, timeout):
        """The child's report once it exited (within ``timeout`` seconds, else it is killed)."""
        deadline = time.monotonic() + timeout
        chunks = []
        while True:
            ready, _, _ = select.select([self.read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.close()
                raise AssertionError(f"the child sent no report within {timeout}s")
            chunk = os.read(self.read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        wait_until(self._reaped, timeout=max(0.1, deadline - time.monotonic()),
                   message="the child to exit")
        assert self.status == 0
        return json.loads(b"".join(chunks))

    def _reaped(self):
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def close(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.status = -9
        os.close(self.read)
