"""Workers scaling: calls/s of ``serve --workers 1`` against ``--workers 2`` for a method that burns
1 ms of CPU (``Burn.Cpu(1)`` in tests/services.py), and of the gateway with 1 and 2 workers.

``python -m bench.workers [--seconds 4] [--rounds 3] [--loaders 2] [--callers 16]`` starts etcd,
then for each configuration in interleaved rounds a node (and, for the gateway rows, a gateway),
and ``--loaders`` load processes of ``--callers`` greenlets each, calling in one shared window.
Each load process has its own client, so its own connections (two per worker): the kernel hands
connections, not calls, to workers. The load shares the node's 2 cores, so it is kept cheap: 2
processes of 16 callers spend about 125 us of CPU per call, 4 of 8 about 220 us (fewer calls in
flight per connection, so fewer answers per wake-up), which takes CPU only the 2-worker node
needs (docs/performance.md, round 13). The gateway rows
use ``wrk`` (``apt-get install wrk``) with 64 keep-alive connections when it is installed, else the
same Python load processes. Prints the median calls/s per configuration and the ratio of 2
workers to 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench.run import PY, ROOT
from framework.devetcd import EtcdProcess
from framework.testing import GatewayProcess, NodeProcess, ProcessGroup


def load_child(target: str, kind: str, seconds: float, callers: int, start_at: float) -> None:
    """One load process: ``callers`` greenlets calling from ``start_at`` (a ``time.time()``, the
    same for every load process, so their windows coincide) for ``seconds``; prints its call
    count, and whether it was ready in time."""
    from gevent import monkey
    monkey.patch_all()
    import gevent
    import framework
    from framework.testing.wire import post_json
    if kind == "rpc":
        client = framework.Client(etcd=target, timeout=10)
        call = lambda: client.Burn.Cpu(1)  # noqa: E731
    else:   # a cheap call: the gateway, not the node, is the bottleneck
        body = {"jsonrpc": "2.0", "id": 1, "method": "HelloService.Hello", "params": ["x"]}
        call = lambda: post_json(target, body)  # noqa: E731
    call()   # connected, warm
    late = time.time() - start_at
    if late < 0:
        # every load process starts at once: one still importing would otherwise take CPU from
        # the others' window, which the 2-worker node needs and the 1-worker node does not
        time.sleep(-late)
    counts = [0] * callers
    end = time.monotonic() + seconds

    def caller(i):
        while time.monotonic() < end:
            call()
            counts[i] += 1
    gevent.joinall([gevent.spawn(caller, i) for i in range(callers)])
    print(json.dumps({"calls": sum(counts), "late": max(0.0, late)}), flush=True)


_WRK_SCRIPT = ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
               'wrk.body = \'{"jsonrpc":"2.0","id":1,"method":"HelloService.Hello","params":["x"]}\'\n')


def wrk(address: str, seconds: float, connections: int = 64) -> float:
    """Requests/s from ``wrk`` (Debian's ``wrk``): a C load generator with keep-alive connections,
    so on 2 cores the generator, not the gateway, stays the smaller cost."""
    path = os.path.join(ROOT, "bench", ".wrk-post.lua")
    with open(path, "w") as f:
        f.write(_WRK_SCRIPT)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", path,
                          f"http://{address}/"], capture_output=True, text=True, timeout=120).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"wrk printed no rate: {out[-500:]}")


def measure(target: str, kind: str, args) -> float:
    if kind == "http" and shutil.which("wrk"):
        return wrk(target, args.seconds)
    start_at = time.time() + 1.0 + 0.5 * args.loaders   # time for each to import and connect
    procs = [subprocess.Popen([PY, "-m", "bench.workers", "--child", target, kind,
                               str(args.seconds), str(args.callers), repr(start_at)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT))
             for _ in range(args.loaders)]
    reports = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    late = max(r["late"] for r in reports)
    if late > 0:
        print(f"  (a load process started {late:.2f} s late: its window was not the others')",
              file=sys.stderr)
    return sum(r["calls"] for r in reports) / args.seconds


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        load_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]),
                   float(sys.argv[6]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loaders", type=int, default=2)
    p.add_argument("--callers", type=int, default=16)
    args = p.parse_args(argv)
    results: dict = {}
    group = ProcessGroup()
    try:
        etcd = group.add(EtcdProcess().start())
        for _ in range(args.rounds):
            for workers in (1, 2):   # the node's workers, for a CPU-bound method
                node = NodeProcess("tests.services", etcd.endpoint, ttl=10, cwd=ROOT,
                                   extra_args=["--workers", str(workers)]).start()
                results.setdefault(("rpc", workers), []).append(
                    measure(etcd.endpoint, "rpc", args))
                node.terminate()
                node.wait()
            node = NodeProcess("tests.services", etcd.endpoint, ttl=10, cwd=ROOT,
                               extra_args=["--workers", "2"]).start()
            for workers in (1, 2):   # the gateway's workers, in front of a 2-worker node
                gateway = GatewayProcess(etcd.endpoint, "--workers", str(workers),
                                         "--service", "HelloService").start()
                results.setdefault(("http", workers), []).append(
                    measure(gateway.address, "http", args))
                gateway.proc.terminate()   # the supervisor stops its workers
                gateway.proc.wait()
                gateway.close()
            node.terminate()
            node.wait()
    finally:
        group.close()
    for kind in ("rpc", "http"):
        one, two = (statistics.median(results[(kind, w)]) for w in (1, 2))
        label = ("node, Burn.Cpu(1) over msgpack" if kind == "rpc"
                 else "gateway, HelloService.Hello over HTTP (node: 2 workers)")
        print(f"{label}: 1 worker {one:,.0f}/s, 2 workers {two:,.0f}/s, ratio {two / one:.2f}x "
              f"(rounds: {[round(x) for x in results[(kind, 1)]]} / "
              f"{[round(x) for x in results[(kind, 2)]]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
