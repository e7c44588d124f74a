"""Gateway bench: requests/s of the HTTP JSON-RPC gateway against bare ``pywsgi`` and a node's own HTTP.

``python -m bench.gateway [--rounds 5] [--seconds 3] [--keep]`` starts etcd, a ``demo_hello`` node,
two one-process gateways (``--service HelloService``, one of them with ``--busy-poll 200``) and
:mod:`bench.bare_pywsgi`, then drives each with
``wrk`` (:func:`bench.workers.wrk`, keep-alive, one wrk thread) posting a JSON-RPC ``Hello``, at 1
and 64 connections, in interleaved rounds (each round rotates the order of the targets, so drift
hits all alike). It prints one row per target and connection count: the median requests/s, its
ratio to bare ``pywsgi``'s median at the same connection count, and the median of the rounds' own
ratios (each round's rate against bare ``pywsgi``'s in that round). :func:`measure` returns the same
rows.

Four targets, the same request:

* ``gateway`` - HTTP -> the gateway -> msgpack -> the node -> back: what a caller of the gateway gets;
* ``gateway --busy-poll 200`` - the same, the gateway's loop polling 200 µs after each event before
  it sleeps (:mod:`framework.busypoll`; the node as it is);
* ``bare pywsgi`` - the same answer computed in the HTTP server itself (the limit of pywsgi + json);
* ``node HTTP`` - ``POST /`` on the node's own RPC port (no second hop).

On 2 cores, wrk and the server under test would otherwise fight for the same core: wrk (and etcd)
run on CPU 0 and the server under test alone on CPU 1. For the gateway, the node it forwards to
stays on CPU 0 with wrk, so the gateway has a core of its own, as one gateway worker would (with
the node on CPU 1 as well, the 64-connection figure drops: the node's CPU comes out of the
gateway's core; the 1-connection one changes little). The node does not busy-poll: on CPU 0 its
spinning would take time from wrk. Every thread of a process is pinned (``/proc/<pid>/task``);
with fewer than 2 CPUs nothing is pinned. ``wrk`` is Debian's
(``apt-get install wrk``); without it the bench says so and measures nothing (:func:`measure` raises).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import time
from typing import Dict, List

from bench.run import PY, ROOT, Served
from bench.workers import wrk
from framework.devetcd import EtcdProcess
from framework.testing import NodeProcess, ProcessGroup

CONNECTIONS = (1, 64)
BARE = "bare pywsgi"
BUSY = "gateway --busy-poll 200"
TARGETS = ("gateway", BUSY, BARE, "node HTTP")
#: the CPU of wrk, etcd and the gateway's node; the server under test gets the other one
LOAD_CPU, SERVER_CPU = 0, 1
WRK_MISSING = "the gateway bench needs wrk (apt-get install wrk); nothing was measured"


def pin(pid: int, cpu: int) -> None:
    """Run every thread of process ``pid`` on ``cpu`` only (no-op with fewer than 2 CPUs)."""
    if (os.cpu_count() or 1) < 2:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass   # a thread that just ended


class Servers:
    """etcd, a node, a gateway and the bare server; ``address[target]`` and ``pids[target]``."""

    def __init__(self):
        self.group = ProcessGroup()
        try:
            self.etcd = self.group.add(EtcdProcess().start())
            self.node = self.group.add(NodeProcess("demo_hello.service", self.etcd.endpoint, ttl=10,
                                                   cwd=ROOT).start())
            self.gateway = self.group.start_gateway(self.etcd.endpoint, "--service", "HelloService")
            self.busy = self.group.start_gateway(self.etcd.endpoint, "--service", "HelloService",
                                                 "--busy-poll", "200")
            self.bare = self.group.add(Served([PY, "-m", "bench.bare_pywsgi"]))
        except BaseException:
            self.group.close()
            raise
        self.address = {"gateway": self.gateway.address, BUSY: self.busy.address,
                        BARE: f"127.0.0.1:{self.bare.port}", "node HTTP": self.node.address}
        self.pids = {"gateway": self.gateway.proc.pid, BUSY: self.busy.proc.pid,
                     BARE: self.bare.proc.pid, "node HTTP": self.node.pid}
        for gateway in (self.gateway, self.busy):   # each gateway has found the node
            gateway.post({"jsonrpc": "2.0", "id": 0, "method": "HelloService.Hello",
                          "params": ["warm"]})

    def place(self, target: str) -> None:
        """``target`` alone on the server CPU; every other process on the load CPU."""
        for name, pid in self.pids.items():
            pin(pid, SERVER_CPU if name == target else LOAD_CPU)
        pin(self.etcd.proc.pid, LOAD_CPU)

    def close(self) -> None:
        self.group.close()


def rounds_of(servers: Servers, targets, rounds: int, duration: float) -> Dict[tuple, List[float]]:
    """req/s per (target, connections), one list entry per round; wrk runs on the load CPU."""
    raw: Dict[tuple, List[float]] = {}
    targets = list(targets)
    mine = os.sched_getaffinity(0)
    try:
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {LOAD_CPU})   # wrk, started from here, inherits it
        for r in range(rounds):
            for target in targets[r % len(targets):] + targets[:r % len(targets)]:
                servers.place(target)
                for connections in CONNECTIONS:
                    raw.setdefault((target, connections), []).append(
                        wrk(servers.address[target], duration, connections))
    finally:
        os.sched_setaffinity(0, mine)
    return raw


def rows_of(raw: Dict[tuple, List[float]], targets=TARGETS) -> List[dict]:
    """Median req/s per (target, connections), its ratio to bare pywsgi's median, and the median
    of each round's ratio to bare pywsgi in that same round (steadier when the machine's speed
    drifts between rounds: each round's pair shares it)."""
    rows = []
    for target in targets:
        for connections in CONNECTIONS:
            values = raw[(target, connections)]
            bares = raw[(BARE, connections)]
            rows.append({"target": target, "connections": connections,
                         "req_s": round(statistics.median(values)),
                         "ratio_to_bare": round(statistics.median(values)
                                                / statistics.median(bares), 3),
                         "paired_ratio": round(statistics.median(
                             v / b for v, b in zip(values, bares)), 3),
                         "rounds": [round(v) for v in values]})
    return rows


def measure(rounds: int = 5, duration: float = 3.0) -> List[dict]:
    """Rows ``{"target", "connections", "req_s", "ratio_to_bare", "paired_ratio", "rounds"}`` for
    the four targets at 1 and 64 connections (medians over ``rounds``, each round's req/s in
    ``rounds``). Raises RuntimeError saying so when wrk is not installed."""
    if not shutil.which("wrk"):
        raise RuntimeError(WRK_MISSING)
    servers = Servers()
    try:
        return rows_of(rounds_of(servers, TARGETS, rounds, duration))
    finally:
        servers.close()


def table(rows: List[dict]) -> str:
    lines = ["| target | connections | req/s | ratio to bare pywsgi | median of round ratios | rounds |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['target']} | {row['connections']} | {row['req_s']:,} | "
                     f"{row['ratio_to_bare']:.2f}x | {row['paired_ratio']:.2f}x | {row['rounds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--keep", action="store_true",
                   help="start the servers, print their addresses and pids, and wait (for a profiler)")
    args = p.parse_args(argv)
    if not shutil.which("wrk"):
        print(WRK_MISSING, file=sys.stderr)
        return 1
    if args.keep:
        servers = Servers()
        try:
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            print(f"etcd {servers.etcd.endpoint}; " + "; ".join(
                f"{t} {servers.address[t]} pid {servers.pids[t]}" for t in TARGETS), flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
        finally:
            servers.close()
    started = time.monotonic()
    print(table(measure(args.rounds, args.seconds)))
    print(f"({args.rounds} rounds x {args.seconds:.0f} s per measurement, "
          f"{time.monotonic() - started:.0f} s; wrk on CPU {LOAD_CPU}, server under test on CPU "
          f"{SERVER_CPU})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
