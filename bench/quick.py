"""Quick A/B check while tuning: the framework against the bare baseline only, no peers, no files.

``python -m bench.quick [--rounds 3] [--seconds 2] [--callers 1,64] [--nodes 1] [--keep]`` starts
etcd, ``--nodes`` ``demo_hello`` nodes (2 or more: the client's hedging path is live; server CPU is
then the first node's) and the baseline server, runs interleaved rounds of ``bench.load`` for both, and
prints per-round and median calls/s, CPU µs per call (client / server) and the ratios. It writes
nothing (``make bench`` is the record); with ``--keep`` it leaves the servers up and prints their
addresses and pids, for a profiler, until interrupted (SIGINT or SIGTERM).
"""
from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time

from bench.run import ROOT, PY, Served, run_load
from framework.devetcd import EtcdProcess
from framework.testing import NodeProcess, ProcessGroup


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--callers", default="1,64")
    p.add_argument("--systems", default="framework,baseline")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="leave the servers up for a profiler")
    args = p.parse_args(argv)
    callers = tuple(int(c) for c in args.callers.split(","))
    systems = args.systems.split(",")
    group = ProcessGroup()
    try:
        etcd = group.add(EtcdProcess().start())
        node = [group.add(NodeProcess("demo_hello.service", etcd.endpoint, ttl=10, cwd=ROOT).start())
                for _ in range(args.nodes)][0]
        served = group.add(Served([PY, "-m", "bench.baseline", "serve"]))
        targets = {"framework": etcd.endpoint, "baseline": served.port}
        pids = {"framework": node.pid, "baseline": served.proc.pid}
        if args.keep:
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill PID tears down too
            print(f"etcd {etcd.endpoint}; node {node.address} pid {node.pid}; "
                  f"baseline port {served.port} pid {served.proc.pid}", flush=True)
            while True:
                time.sleep(3600)
        rows = {s: [] for s in systems}
        for r in range(args.rounds):
            for system in systems[r % len(systems):] + systems[:r % len(systems)]:
                out = run_load(system, targets[system], args.seconds, callers,
                               **{"server-pid": pids[system]})
                rows[system].append(out["results"])
                print(system, " | ".join(
                    f"{x['callers']}: {x['calls_per_s']:,.0f}/s p50 {x['p50_ms']:.2f} "
                    f"p99 {x['p99_ms']:.2f} cpu {x['client_cpu_us_per_call']:.0f}/"
                    f"{x['server_cpu_us_per_call'] or 0:.0f}" for x in out["results"]), flush=True)
        med = {s: [{k: statistics.median(rnd[i][k] or 0 for rnd in rows[s])
                    for k in ("calls_per_s", "p50_ms", "p99_ms", "client_cpu_us_per_call",
                              "server_cpu_us_per_call")} for i in range(len(callers))]
               for s in systems}
        for s in systems:
            print(f"median {s}: " + " | ".join(
                f"{c}: {m['calls_per_s']:,.0f}/s p99 {m['p99_ms']:.2f} cpu "
                f"{m['client_cpu_us_per_call']:.0f}/{m['server_cpu_us_per_call']:.0f}"
                for c, m in zip(callers, med[s])))
        if "framework" in med and "baseline" in med:
            print("ratios: " + ", ".join(
                f"@{c} {f['calls_per_s'] / b['calls_per_s']:.2f}"
                for c, f, b in zip(callers, med["framework"], med["baseline"])))
    except KeyboardInterrupt:
        pass
    finally:
        group.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
