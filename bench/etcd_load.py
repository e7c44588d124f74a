"""etcd load of registrations, measured: the requests and new TCP connections per second that many
simulated nodes send etcd, with and without keep-alive connection reuse, with and without TLS.

``python -m bench.etcd_load [--nodes 1000] [--procs 4] [--ttl 10] [--seconds 20] [--warmup 11]
[--scenarios plain-reuse,plain-no-reuse,tls-reuse,tls-no-reuse]``

Each scenario gets a fresh dev etcd (:class:`framework.devetcd.EtcdProcess`) and ``--procs``
gevent-patched worker processes (``python -m bench.etcd_load worker ...``), each running its share of
:class:`framework.registry.Registration` objects, every one with an :class:`Etcd` of its own as every
node process has. Starts are spread over TTL/3, so keepalives arrive evenly, as from nodes started at
different times. After the warm-up, steady state is measured over ``--seconds``:

* client side: the sum of every ``Etcd.requests`` and ``Etcd.connections_opened``, the time each
  etcd call took (p50 and p99) and worker CPU;
* etcd side: ``grpc_server_started_total`` from etcd's ``/metrics`` (inside etcd each JSON-gateway
  request is one gRPC call), etcd's CPU seconds and its open file descriptors;
* kernel: sockets connected to etcd's port at the end, and TCP PassiveOpens from /proc/net/snmp -
  connections accepted on the whole host, so other programs running meanwhile add to it.

Not part of the tests; it prints a table (and with ``--json`` the raw figures); :func:`measure`
returns the rows (``make bench`` runs plain-reuse, :mod:`bench.scale`). :class:`Children` drives
child processes over their stdin and stdout, here and in :mod:`bench.fanout`.
"""
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    # the worker is a gevent program like a node; patch before anything imports socket
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from typing import Any, Dict, Iterator, List, Optional, Sequence  # noqa: E402

from framework.devetcd import EtcdProcess, make_certs  # noqa: E402
from framework.etcd import Etcd, EtcdConfig  # noqa: E402
from framework.registry import Registration  # noqa: E402
from framework.testing.wire import established  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = {"plain-reuse": (False, True), "plain-no-reuse": (False, False),
             "tls-reuse": (True, True), "tls-no-reuse": (True, False)}
PREFIX = "/bench-etcd-load/LoadService/"


class TimedEtcd(Etcd):
    """An Etcd that notes how long each call took (connect, TLS handshake and answer together)."""

    def __init__(self, *args, latencies: List[float], **kw):
        super().__init__(*args, **kw)
        self.latencies = latencies

    def _call(self, path: str, body: dict, retry_auth: bool = True) -> dict:
        start = time.perf_counter()
        try:
            return super()._call(path, body, retry_auth)
        finally:
            self.latencies.append(time.perf_counter() - start)


# ---- the worker: simulated nodes ------------------------------------------------------------------

def worker(argv: List[str]) -> int:
    import gevent

    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--ttl", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--no-reuse", action="store_true")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    args = p.parse_args(argv)
    config = EtcdConfig(args.endpoint, ca=args.ca, cert=args.cert, key=args.key,
                        keep_alive=not args.no_reuse)
    tls = config.ssl_context()
    latencies: List[float] = []
    clients = [TimedEtcd(args.endpoint, tls=tls, keep_alive=config.keep_alive, latencies=latencies)
               for _ in range(args.nodes)]
    regs = [Registration(etcd, {f"{PREFIX}{args.index}-{i}": json.dumps({"node": i})}, ttl=args.ttl)
            for i, etcd in enumerate(clients)]
    spread = args.ttl / 3
    for i, reg in enumerate(regs):
        gevent.spawn_later(i * spread / len(regs), reg.start)
    deadline = time.monotonic() + 60
    while not all(r.registered for r in regs) and time.monotonic() < deadline:
        gevent.sleep(0.05)
    print("ready", sum(r.registered for r in regs), flush=True)
    for line in commands():
        if line == "snap":
            print(json.dumps({"requests": sum(c.requests for c in clients),
                              "opened": sum(c.connections_opened for c in clients),
                              "registered": sum(r.registered for r in regs),
                              "failures": sum(r.failures for r in regs),
                              "cpu": time.process_time(), "latencies": latencies[:]}), flush=True)
            del latencies[:]
        else:   # "stop" or EOF
            break
    gevent.joinall([gevent.spawn(r.stop) for r in regs], timeout=30)
    for c in clients:
        c.close()
    return 0


# ---- the driver ------------------------------------------------------------------------------------

def _etcd_side(etcd: EtcdProcess) -> Dict[str, float]:
    """grpc calls started, CPU seconds and open fds, from etcd's own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"{etcd.client_url}/metrics", timeout=10,
                                context=etcd.client_ssl_context()) as resp:
        text = resp.read().decode()
    out = {"grpc_started": 0.0, "cpu": 0.0, "fds": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "grpc_server_started_total":
                out["grpc_started"] += s.value
            elif s.name == "process_cpu_seconds_total":
                out["cpu"] = s.value
            elif s.name == "process_open_fds":
                out["fds"] = s.value
    return out


def _passive_opens() -> int:
    """TCP connections accepted on this host so far (every program's, etcd's among them)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("PassiveOpens")])


def commands() -> Iterator[str]:
    """A child's orders: the lines of its stdin, until EOF. Read in a real thread: a blocking read
    in a gevent process would stop every greenlet."""
    import gevent
    while True:
        line = gevent.get_hub().threadpool.spawn(sys.stdin.readline).get()
        if not line:
            return
        yield line.strip()


class Children:
    """Child processes driven over their stdin and stdout (used here and by :mod:`bench.fanout`):
    each prints one line when it is ready (``ready`` holds them, in order), then answers each line
    it is sent with one line of JSON (read by :meth:`ask`)."""

    def __init__(self, commands: List[List[str]], timeout: float = 120.0):
        self.timeout = timeout
        self.procs: List[subprocess.Popen] = []
        self._lines: List[queue.Queue] = []
        try:
            for cmd in commands:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                                        start_new_session=True)
                self.procs.append(proc)
                lines: queue.Queue = queue.Queue()
                threading.Thread(target=self._read, args=(proc, lines), daemon=True).start()
                self._lines.append(lines)
            self.ready = [self._line(i) for i in range(len(self.procs))]
        except BaseException:
            self.stop(kill=True)
            raise

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _line(self, i: int) -> str:
        try:
            line = self._lines[i].get(timeout=self.timeout)
        except queue.Empty:
            raise RuntimeError(f"child {self.procs[i].pid} did not answer within "
                               f"{self.timeout}s") from None
        if line is None:
            raise RuntimeError(f"child {self.procs[i].pid} exited with {self.procs[i].wait()}")
        return line

    def pids(self) -> List[int]:
        return [p.pid for p in self.procs]

    def ask(self, line: str) -> List[dict]:
        """Send ``line`` to every child; their JSON answers, in order."""
        for p in self.procs:
            p.stdin.write(line + "\n")
            p.stdin.flush()
        return [json.loads(self._line(i)) for i in range(len(self.procs))]

    def stop(self, kill: bool = False) -> None:
        """Ask every child to stop (EOF on its stdin); kill any still there after 60 s."""
        for p in self.procs:
            try:
                if not kill:
                    p.stdin.write("stop\n")
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(5 if kill else 60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _workers(etcd: EtcdProcess, nodes: int, procs: int, ttl: int, reuse: bool) -> Children:
    """The worker processes of one scenario; ``ready`` lines say how many nodes registered."""
    cmds = []
    for index in range(procs):
        cmd = [sys.executable, "-m", "bench.etcd_load", "worker", "--endpoint", etcd.endpoint,
               "--nodes", str(nodes // procs), "--ttl", str(ttl), "--index", str(index)]
        if not reuse:
            cmd.append("--no-reuse")
        if etcd.tls is not None:
            cmd += ["--ca", etcd.tls.ca, "--cert", etcd.tls.client_cert, "--key", etcd.tls.client_key]
        cmds.append(cmd)
    return Children(cmds)


def _snap(workers: Children) -> Dict[str, Any]:
    """Every worker's counters, added up (numbers add, lists join)."""
    total: Dict[str, Any] = {}
    for reply in workers.ask("snap"):
        for k, v in reply.items():
            total[k] = total[k] + v if k in total else v
    return total


def run_scenario(name: str, args, certs) -> dict:
    tls, reuse = SCENARIOS[name]
    etcd = EtcdProcess(tls=certs if tls else None).start()
    workers: Optional[Children] = None
    try:
        workers = _workers(etcd, args.nodes, args.procs, args.ttl, reuse)
        registered = sum(int(line.split()[1]) for line in workers.ready)
        time.sleep(args.warmup)   # a benchmark's warm-up: let start-up traffic pass
        c0, e0, k0, t0 = _snap(workers), _etcd_side(etcd), _passive_opens(), time.monotonic()
        time.sleep(args.seconds)
        c1, e1, k1, t1 = _snap(workers), _etcd_side(etcd), _passive_opens(), time.monotonic()
        dt = t1 - t0
        window = sorted(c1["latencies"])   # the calls answered since the first snapshot
        return {"scenario": name, "nodes": registered, "seconds": round(dt, 2),
                "client_requests_per_s": (c1["requests"] - c0["requests"]) / dt,
                "etcd_grpc_calls_per_s": (e1["grpc_started"] - e0["grpc_started"]) / dt,
                "new_connections_per_s": (c1["opened"] - c0["opened"]) / dt,
                "host_accepts_per_s": (k1 - k0) / dt,
                "call_p50_ms": 1000 * window[len(window) // 2],
                "call_p99_ms": 1000 * window[int(len(window) * 0.99)],
                "established": established(etcd.port, this_process=False), "etcd_open_fds": e1["fds"],
                "etcd_cpu_pct": 100 * (e1["cpu"] - e0["cpu"]) / dt,
                "clients_cpu_pct": 100 * (c1["cpu"] - c0["cpu"]) / dt,
                "registered_at_end": c1["registered"], "failures": c1["failures"] - c0["failures"]}
    finally:
        if workers is not None:
            workers.stop()
        etcd.close()


COLUMNS = [("scenario", "scenario", "{}"), ("nodes", "nodes", "{}"),
           ("client_requests_per_s", "req/s client", "{:.0f}"),
           ("etcd_grpc_calls_per_s", "req/s etcd", "{:.0f}"),
           ("new_connections_per_s", "new conn/s", "{:.1f}"),
           ("host_accepts_per_s", "host accepts/s", "{:.1f}"),
           ("call_p50_ms", "call p50 ms", "{:.1f}"), ("call_p99_ms", "call p99 ms", "{:.1f}"),
           ("established", "open conns", "{}"), ("etcd_open_fds", "etcd fds", "{:.0f}"),
           ("etcd_cpu_pct", "etcd CPU %", "{:.1f}"), ("clients_cpu_pct", "clients CPU %", "{:.1f}"),
           ("failures", "errors", "{:.0f}")]


def table(rows: List[dict]) -> str:
    cells = [[title for _, title, _ in COLUMNS]]
    cells += [[fmt.format(row[key]) for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def measure(nodes: int = 1000, procs: int = 4, ttl: int = 10, seconds: float = 20.0,
            warmup: Optional[float] = None, scenarios: Sequence[str] = tuple(SCENARIOS)
            ) -> List[dict]:
    """One row per scenario (the columns of :data:`COLUMNS`); each on a fresh etcd. ``warmup``
    defaults to TTL + 1 s: every node's loop did a full round before the measurement."""
    args = argparse.Namespace(nodes=nodes, procs=procs, ttl=ttl, seconds=seconds,
                              warmup=ttl + 1.0 if warmup is None else warmup)
    rows = []
    with tempfile.TemporaryDirectory(prefix="etcd-load-") as tmp:
        certs = make_certs(os.path.join(tmp, "pki")) if any(
            SCENARIOS[name][0] for name in scenarios) else None
        for name in scenarios:
            rows.append(run_scenario(name, args, certs))
            print(f"{name}: done", file=sys.stderr, flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before measuring (default TTL + 1: every loop did a full round)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    args = p.parse_args(argv)
    rows = measure(args.nodes, args.procs, args.ttl, args.seconds, args.warmup,
                   args.scenarios.split(","))
    print(f"{args.nodes} nodes in {args.procs} gevent processes, TTL {args.ttl}s, "
          f"steady state over {args.seconds:.0f}s")
    print(table(rows))
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
