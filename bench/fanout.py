"""Fan-out: how fast one registration reaches many discovery caches, and what that costs etcd.

``python -m bench.fanout [--watchers 1000] [--procs 4] [--registrations 20] [--share] [--json]``

Starts a dev etcd (:class:`framework.devetcd.EtcdProcess`) and ``--procs`` gevent-patched watcher
processes (``python -m bench.fanout watcher ...``). Each holds its share of the caches, and every
cache is a :class:`framework.discovery.Discovery` of its own on an :class:`framework.etcd.Etcd` of
its own, watching the one service. By default (``share=False``) each runs its own watch, as that
many client processes would: 1,000 caches are 1,000 watch streams (and 1,000 keep-alive
connections for their lists). With ``--share`` the caches of a process share one watch
(:mod:`framework.sharing`, the default for a ``Discovery``): 1,000 caches in 4 processes are 4
streams, and each process fans a change out to its caches itself.

The driver then registers nodes one at a time with :class:`framework.registry.Registration`
(grant, put, keepalive) and stops each (revoke). A change's propagation to a cache is the time
from just before the put (the revoke) is sent until that cache's listener sees the node join
(leave): the put's own round trip is included. Every process stamps with ``time.time()``, one
clock on one machine. Meanwhile the driver reads etcd's CPU (``/proc/<pid>/stat``) and the
watcher processes' CPU; etcd's connections are counted by the kernel (``/proc/net/tcp``) and by
etcd's open descriptors.

:func:`measure` returns the figures as a dict; ``tests/test_fanout.py`` runs a small one.
"""
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["watcher"]:
    # a watcher process is a gevent program like a client; patch before anything imports socket
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Dict, List, Optional, Tuple  # noqa: E402

from bench.etcd_load import Children, commands  # noqa: E402
from bench.load import _proc_cpu, percentile  # noqa: E402
from bench.registry import record  # noqa: E402
from framework.devetcd import EtcdProcess  # noqa: E402
from framework.discovery import Discovery  # noqa: E402
from framework.etcd import Etcd  # noqa: E402
from framework.registry import Registration  # noqa: E402
from framework.testing.wire import established  # noqa: E402

PREFIX, SERVICE = "/bench-fanout/", "FanoutService"


def raise_nofile(wanted: int) -> None:
    """Two sockets per cache (its watch and its keep-alive connection) need more than 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))


# ---- a watcher process: its share of the caches ----------------------------------------------------

class Arrivals:
    """When each cache saw each change: ``(event, address) -> [time.time(), ...]``. Every cache
    calls the one listener, once per change, on its watch worker."""

    def __init__(self, caches: int):
        self.caches = caches
        self.times: Dict[Tuple[str, str], List[float]] = {}
        self.changed = threading.Event()   # patched: a gevent Event

    def __call__(self, service: str, added, removed, snapshot) -> None:
        now = time.time()
        for event, nodes in (("join", added), ("leave", removed)):
            for node in nodes:
                self.times.setdefault((event, node.address), []).append(now)
        self.changed.set()

    def wait(self, event: str, address: str, timeout: float) -> List[float]:
        """Every cache's time for the change, or as many as came within ``timeout``."""
        deadline = time.monotonic() + timeout
        key = (event, address)
        while len(self.times.get(key, ())) < self.caches:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.changed.clear()
            if len(self.times.get(key, ())) < self.caches:
                self.changed.wait(min(left, 0.5))
        return self.times.pop(key, [])


def watcher(argv: List[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--caches", type=int, required=True)
    p.add_argument("--share", action="store_true")
    args = p.parse_args(argv)
    raise_nofile(2 * args.caches + 64)
    arrivals = Arrivals(args.caches)
    caches = [Discovery(Etcd(args.endpoint), prefix=PREFIX, share=args.share)
              for _ in range(args.caches)]
    for cache in caches:
        cache.subscribe(arrivals)
        cache.watch(SERVICE)
    deadline = time.monotonic() + 60
    while not all(c.ready(SERVICE) for c in caches) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("ready", sum(c.ready(SERVICE) for c in caches), flush=True)
    for line in commands():
        word, *rest = line.split()
        if word == "wait":   # wait EVENT ADDRESS TIMEOUT
            times = arrivals.wait(rest[0], rest[1], float(rest[2]))
            print(json.dumps({"times": times, "missing": args.caches - len(times)}), flush=True)
        elif word == "stats":
            print(json.dumps({"cpu": time.process_time(),
                              "resyncs": sum(s["resyncs"] for c in caches
                                             for s in c.stats().values())}), flush=True)
        else:   # "stop"
            break
    for cache in caches:
        cache.close()
    return 0


# ---- the driver --------------------------------------------------------------------------------------

class StampedEtcd(Etcd):
    """An Etcd that notes when each put and revoke was sent (``time.time()``, as the watchers)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.sent: Dict[str, float] = {}

    def put(self, key, value, lease=0):
        self.sent["put"] = time.time()
        return super().put(key, value, lease)

    def revoke(self, lease):
        self.sent["revoke"] = time.time()
        return super().revoke(lease)


def _change(children: Children, event: str, address: str, sent: float, timeout: float
            ) -> Tuple[List[float], int]:
    """Every watcher's propagation times (ms) for one change, and how many caches missed it."""
    replies = children.ask(f"wait {event} {address} {timeout}")
    return ([(t - sent) * 1000 for r in replies for t in r["times"]],
            sum(r["missing"] for r in replies))


def _one_node(children: Children, endpoint: str, i: int, timeout: float) -> Dict[str, tuple]:
    """Register one node, wait for every cache to see it, deregister it, wait again."""
    address = f"10.99.{i // 250}.{i % 250}:7000"
    etcd = StampedEtcd(endpoint)
    reg = Registration(etcd, {f"{PREFIX}{SERVICE}/{address}": record(SERVICE, address)}, ttl=10)
    try:
        reg.start()
        if not reg.wait_registered(timeout):
            raise RuntimeError(f"registration {i} did not happen within {timeout}s")
        join = _change(children, "join", address, etcd.sent["put"], timeout)
    finally:
        reg.stop()
        etcd.close()
    return {"join": join, "leave": _change(children, "leave", address, etcd.sent["revoke"], timeout)}


def _summary(ms: List[float]) -> dict:
    ms = sorted(ms)
    return {"n": len(ms), "p50_ms": percentile(ms, 0.50), "p90_ms": percentile(ms, 0.90),
            "p99_ms": percentile(ms, 0.99), "max_ms": ms[-1] if ms else float("nan"),
            "mean_ms": statistics.fmean(ms) if ms else float("nan")}


def measure(watchers: int = 1000, procs: int = 4, registrations: int = 20,
            etcd: Optional[EtcdProcess] = None, timeout: float = 20.0, share: bool = False) -> dict:
    """``watchers`` caches in ``procs`` processes; ``registrations`` nodes registered and
    deregistered one at a time. Uses ``etcd`` when given (its ``proc`` must be a local process),
    else starts one. ``share``: the caches of a process share one watch (framework.sharing); by
    default each has its own, as that many processes would. Returns propagation percentiles for
    joins and leaves, misses, connections and CPU figures (see the module docstring)."""
    own = etcd is None
    etcd = EtcdProcess().start() if own else etcd
    children: Optional[Children] = None
    try:
        started = time.monotonic()
        children = Children([
            [sys.executable, "-m", "bench.fanout", "watcher", "--endpoint", etcd.endpoint,
             "--caches", str(watchers // procs + (1 if i < watchers % procs else 0))]
            + (["--share"] if share else []) for i in range(procs)])
        listening = sum(int(line.split()[1]) for line in children.ready)
        ready_s = time.monotonic() - started
        pids, cpu = children.pids(), _proc_cpu
        time.sleep(1.0)   # the last watches' start-up traffic passes; then idle cost, 1 s
        conns = established(etcd.port, this_process=False)
        fds = len(os.listdir(f"/proc/{etcd.proc.pid}/fd"))
        e0, w0, t0 = cpu(etcd.proc.pid), sum(map(cpu, pids)), time.monotonic()
        time.sleep(1.0)
        e1, w1, t1 = cpu(etcd.proc.pid), sum(map(cpu, pids)), time.monotonic()
        idle_pct = 100 * (e1 - e0) / (t1 - t0)
        results = [_one_node(children, etcd.endpoint, i, timeout) for i in range(registrations)]
        e2, w2, t2 = cpu(etcd.proc.pid), sum(map(cpu, pids)), time.monotonic()
        resyncs = sum(r["resyncs"] for r in children.ask("stats"))
    finally:
        if children is not None:
            children.stop()
        if own:
            etcd.close()
    join = [ms for r in results for ms in r["join"][0]]
    leave = [ms for r in results for ms in r["leave"][0]]
    window = t2 - t1
    return {"watchers": watchers, "procs": procs, "registrations": registrations, "share": share,
            "listening": listening, "ready_s": ready_s,
            "join": _summary(join), "leave": _summary(leave),
            "missed": sum(r["join"][1] + r["leave"][1] for r in results),
            "etcd_connections": conns, "etcd_fds": fds,
            "window_s": window, "etcd_idle_cpu_pct": idle_pct,
            "etcd_cpu_s": e2 - e1, "etcd_cpu_s_per_registration": (e2 - e1) / registrations,
            "etcd_cpu_pct": 100 * (e2 - e1) / window,
            "watchers_cpu_pct": 100 * (w2 - w1) / window,
            "watcher_cpu_us_per_change_per_cache": 1e6 * (w2 - w1) / (2 * registrations * watchers),
            "watchers_idle_cpu_pct": 100 * (w1 - w0) / (t1 - t0),
            "resyncs": resyncs}


def text(r: dict) -> str:
    j, lv = r["join"], r["leave"]
    return "\n".join([
        f"{r['watchers']:,} caches ("
        f"{'one shared watch per process' if r.get('share') else 'own watch each'}) in "
        f"{r['procs']} processes, "
        f"{r['registrations']} registrations, each seen by {r['listening']:,} caches "
        f"(missed: {r['missed']})",
        f"join  propagation: p50 {j['p50_ms']:.1f} ms, p90 {j['p90_ms']:.1f}, p99 {j['p99_ms']:.1f}, "
        f"max {j['max_ms']:.1f}",
        f"leave propagation: p50 {lv['p50_ms']:.1f} ms, p90 {lv['p90_ms']:.1f}, "
        f"p99 {lv['p99_ms']:.1f}, max {lv['max_ms']:.1f}",
        f"etcd: {r['etcd_connections']:,} connections held ({r['etcd_fds']:,} descriptors); "
        f"CPU {r['etcd_cpu_s_per_registration'] * 1000:.0f} ms per registration (join + leave), "
        f"{r['etcd_cpu_pct']:.0f}% of one core over the {r['window_s']:.1f} s fan-out "
        f"(idle: {r['etcd_idle_cpu_pct']:.1f}%)",
        f"watchers: {r['watchers_cpu_pct']:.0f}% of one core during the fan-out, "
        f"{r['watcher_cpu_us_per_change_per_cache']:.0f} us per change per cache; "
        f"{r['resyncs']} resyncs; all listening after {r['ready_s']:.1f} s"])


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["watcher"]:
        return watcher(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--registrations", type=int, default=20)
    p.add_argument("--share", action="store_true",
                   help="the caches of a process share one watch (default: one each)")
    p.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    args = p.parse_args(argv)
    result = measure(args.watchers, args.procs, args.registrations, share=args.share)
    print(text(result))
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
