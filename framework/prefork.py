"""Pre-fork serving: one port, N worker processes, one registration - ``serve``/``gateway --workers N``.

A node is one gevent process, so it uses one core. With ``--workers N`` the command becomes a
supervisor, as in gunicorn:

* it binds the port once and starts N workers, each ``python -m framework serve|gateway ...
  --listen-fd FD``: a fresh interpreter that inherits the listening socket (so port 0 works and
  every worker accepts on the same port) and imports the application's code itself;
* it holds the node's single registration: each worker prints the records it would have
  registered (``records {...}``), and the supervisor keeps them in etcd on its own lease;
* a worker that dies is started again (at most once a second per worker);
* **SIGTERM / SIGINT** stop in the usual order: revoke the lease (callers drop the address), keep
  the workers serving for ``grace`` seconds, then SIGTERM every worker - each tells its
  connections it is going away, drains and exits - and exit 0;
* **SIGHUP** replaces the workers one at a time: a new worker starts (fresh code) and is accepting
  before the old one is told to go away and drain, so no call is lost. Calls that reach an old
  worker after that are answered GoingAway (not processed) and re-sent by the client. Changed
  records (a new method) are put on the same lease.

The supervisor itself runs no application code and is not gevent-patched: threads read the
workers' output, and the registration runs on its own thread.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

log = logging.getLogger(__name__)

READY_PREFIXES = ("serving ", "gateway listening on ")


class Worker:
    """One worker process and what it printed: its records and its ready line."""

    def __init__(self, argv: List[str], fd: int):
        # its own session: a terminal's Ctrl-C reaches the supervisor, which stops the workers in
        # order; a worker whose supervisor died stops by itself (it watches its parent)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     pass_fds=(fd,), text=True, start_new_session=True)
        self.records: Optional[Dict[str, str]] = None
        self.ready_line = ""
        self.ready = threading.Event()
        self.started = time.monotonic()
        threading.Thread(target=self._read, daemon=True, name=f"worker-{self.proc.pid}").start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("records "):
                self.records = json.loads(line[len("records "):])
            elif line.startswith(READY_PREFIXES) and not self.ready.is_set():
                self.ready_line = line.strip()
                self.ready.set()
        self.ready.set()   # it exited: nobody waits for ever

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass


class Supervisor:
    """Runs ``workers`` copies of ``argv`` (which gets ``--listen-fd FD``) on one listening
    socket; ``registration(records)`` builds the node's Registration from a worker's records
    (None for a gateway: nothing to register)."""

    def __init__(self, argv: List[str], workers: int, listener: socket.socket,
                 registration: Any = None, grace: float = 0.5, drain_timeout: float = 10.0,
                 start_timeout: float = 30.0):
        self.listener = listener
        self.fd = listener.fileno()
        os.set_inheritable(self.fd, True)
        self.argv = argv + ["--listen-fd", str(self.fd)]
        self.count = workers
        self.make_registration = registration
        self.registration: Any = None
        self.grace, self.drain_timeout, self.start_timeout = grace, drain_timeout, start_timeout
        self.workers: List[Optional[Worker]] = [None] * workers
        self.restarts = 0
        self._stopping = threading.Event()
        self._reload = threading.Event()

    # ---- starting ----------------------------------------------------------------------------

    def _start_worker(self) -> Worker:
        worker = Worker(self.argv, self.fd)
        if not worker.ready.wait(self.start_timeout) or not worker.alive:
            worker.signal(signal.SIGKILL)
            raise RuntimeError(f"worker {worker.proc.pid} did not start")
        if worker.records is not None:
            self._register(worker.records)
        return worker

    def _register(self, records: Dict[str, str]) -> None:
        if self.make_registration is None:
            return
        # the record says how many workers share the address: a client opens that many
        # connections to it, or all its calls would go to the one worker its connection reached
        records = {key: _with_workers(value, self.count) for key, value in records.items()}
        if self.registration is None:
            self.registration = self.make_registration(records)
            self.registration.start()
            if not self.registration.wait_registered(10.0):
                log.warning("not registered in etcd yet; serving anyway and retrying")
        elif records != self.registration.entries:
            self.registration.replace(records)

    def start(self) -> str:
        """Start every worker; returns the first one's ready line (address, services). The
        signal handlers are in place first: a signal right after the ready line means a stop."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self._stopping.set())
        signal.signal(signal.SIGHUP, lambda signum, frame: self._reload.set())
        for i in range(self.count):
            self.workers[i] = self._start_worker()
        return self.workers[0].ready_line

    # ---- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit code."""
        while not self._stopping.wait(0.1):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self._restart_dead()
        self.stop()
        return 0

    def _restart_dead(self) -> None:
        for i, worker in enumerate(self.workers):
            if worker is not None and not worker.alive and not self._stopping.is_set():
                if time.monotonic() - worker.started < 1.0:
                    continue   # it died at once: try again a second after it started
                log.warning("worker %d exited with %s; starting another", worker.proc.pid,
                            worker.proc.returncode)
                self.restarts += 1
                try:
                    self.workers[i] = self._start_worker()
                except RuntimeError as exc:
                    log.error("%s", exc)
                    worker.started = time.monotonic()

    def reload(self) -> None:
        """Replace the workers one by one: the new one accepts before the old one drains."""
        log.info("reloading %d workers", len(self.workers))
        for i, old in enumerate(list(self.workers)):
            try:
                self.workers[i] = self._start_worker()
            except RuntimeError as exc:
                log.error("reload stopped: %s (the old workers keep serving)", exc)
                return
            if old is not None:
                old.signal(signal.SIGTERM)
                _wait(old, self.drain_timeout + 2.0)

    def stop(self) -> None:
        """Deregister, serve out the grace window, then let every worker drain and exit."""
        if self.registration is not None:
            self.registration.stop()
        if self.grace > 0:
            time.sleep(self.grace)
        for worker in self.workers:
            if worker is not None:
                worker.signal(signal.SIGTERM)
        for worker in self.workers:
            if worker is not None:
                _wait(worker, self.drain_timeout + 2.0)
        self.listener.close()


def _with_workers(value: str, workers: int) -> str:
    record = json.loads(value)
    record["workers"] = workers
    return json.dumps(record)


def _wait(worker: Worker, timeout: float) -> None:
    try:
        worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("worker %d did not drain in %.1fs; killing it", worker.proc.pid, timeout)
        worker.signal(signal.SIGKILL)
        worker.proc.wait()


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The shared listening socket the workers inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def worker_argv(argv: List[str]) -> List[str]:
    """``python -m framework <argv>`` without ``--workers N``: what each worker runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return [sys.executable, "-m", "framework"] + out
