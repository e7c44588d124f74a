"""Load driver: one process runs one system at 1 caller, then at 64 callers, and prints JSON.

``python -m bench.load SYSTEM TARGET [--callers 1,64] [--seconds 2] [--warmup 0.5] [--prefix P]
[--balancer rr|p2c]``; TARGET is the etcd endpoint for ``framework`` and the server port otherwise.

gevent systems (framework, baseline, zerorpc) run in a monkey-patched process with greenlets as
callers - the framework client uses the process's socket/threading, as a gevent app would. Pyro5 and
grpcio run their callers as OS threads, their usual model. Each caller loops ``Hello("world")``;
calls finishing inside the measured window count, after a warm-up that also opens connections.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Callable, Dict, List

GEVENT_SYSTEMS = ("framework", "baseline", "zerorpc")


def percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def factory(system: str, target: str, prefix: str, balancer: str) -> Callable[[], Callable[[], str]]:
    """-> ``per_caller()`` -> ``call()``. Built once; ``per_caller`` runs once per caller."""
    if system == "framework":
        import framework
        from framework import balancer as policies
        kwargs = {}
        if balancer:
            kwargs["balancer"] = {"rr": policies.RoundRobin, "p2c": policies.P2C}[balancer]
        client = framework.Client(etcd=target, timeout=5.0, prefix=prefix, **kwargs)
        # exactly what a user writes, proxy lookups included
        return lambda: (lambda: client.HelloService.Hello("world"))
    if system == "baseline":
        from bench.baseline import BareClient
        bare = BareClient("127.0.0.1", int(target))
        return lambda: (lambda: bare.call("Hello", ["world"]))
    from bench import peers
    return {"zerorpc": peers.zerorpc_client, "pyro5": peers.pyro5_client,
            "grpc": peers.grpc_client}[system](int(target))


def measure(per_caller: Callable[[], Callable[[], str]], callers: int, seconds: float,
            warmup: float, spawn, sleep, server_pid: int = 0) -> Dict[str, float]:
    state = {"measuring": False, "stop": False}
    latencies: List[float] = []
    errors = [0]
    clock = time.perf_counter

    def caller():
        call = per_caller()
        record = latencies.append
        while not state["stop"]:
            t0 = clock()
            try:
                reply = call()
            except Exception:
                errors[0] += 1
                continue
            if state["measuring"]:
                record(clock() - t0)
            if reply != "hello:world":
                errors[0] += 1

    workers = [spawn(caller) for _ in range(callers)]
    sleep(warmup)
    latencies.clear()
    errors[0] = 0
    state["measuring"] = True
    cpu0, server0 = _cpu(), _proc_cpu(server_pid)
    started = clock()
    sleep(seconds)
    state["measuring"] = False
    elapsed = clock() - started
    cpu, server_cpu = _cpu() - cpu0, _proc_cpu(server_pid) - server0
    n = len(latencies)
    state["stop"] = True
    for w in workers:
        w.join()
    values = sorted(latencies[:n])
    return {"callers": callers, "calls": n, "calls_per_s": n / elapsed, "errors": errors[0],
            "p50_ms": percentile(values, 0.50) * 1000, "p99_ms": percentile(values, 0.99) * 1000,
            "client_cpu_us_per_call": cpu / max(n, 1) * 1e6,
            "server_cpu_us_per_call": server_cpu / max(n, 1) * 1e6 if server_pid else None}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the whole client process, all threads
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (user + system, from /proc; 0 when unknown)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("system")
    p.add_argument("target")
    p.add_argument("--callers", default="1,64")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--prefix", default="/services/")
    p.add_argument("--balancer", default="")
    p.add_argument("--server-pid", type=int, default=0, help="also report this process's CPU")
    args = p.parse_args(argv)
    if args.system in GEVENT_SYSTEMS:
        from gevent import monkey
        monkey.patch_all()
        import gevent
        spawn, sleep = gevent.spawn, gevent.sleep
    else:
        import threading

        def spawn(fn):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            return t
        sleep = time.sleep
    per_caller = factory(args.system, args.target, args.prefix, args.balancer)
    results = [measure(per_caller, int(c), args.seconds, args.warmup, spawn, sleep, args.server_pid)
               for c in args.callers.split(",")]
    print(json.dumps({"system": args.system, "results": results}), flush=True)
    sys.stdout.flush()
    os._exit(0)  # peers' background threads (grpc, zmq) may not let a normal exit finish quickly


if __name__ == "__main__":
    sys.exit(main())
