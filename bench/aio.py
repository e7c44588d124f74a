"""asyncio callers: the ``framework.aio`` client against the gevent client and ``grpc.aio``.

``python -m bench.aio [--rounds 3] [--seconds 2]`` starts etcd, a ``demo_hello`` node and the grpcio
peer (:mod:`bench.peers`), then runs interleaved rounds - each round measures every system once,
in a rotated order - of ``Hello("world")`` at 1 and 64 concurrent callers, one process per
measurement, and prints the medians and the asyncio/gevent ratios. :func:`measure` returns the rows
for ``make bench``.

Callers: asyncio tasks on one default (selector) event loop for ``aio`` and ``grpc.aio``, greenlets
in a monkey-patched process for ``gevent`` (``bench.load framework``, what ``make bench`` runs).
``grpc.aio`` calls the same synchronous grpcio server as ``make bench`` (a thread pool, generic
handler, string serializers - no protobuf cost).

``python -m bench.aio load SYSTEM TARGET`` is one measurement (``aio``: TARGET is the etcd
endpoint; ``grpc.aio``: the server's port), printed as ``bench.load`` prints one.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Awaitable, Callable, Dict, List, Sequence

from bench.load import _cpu, _proc_cpu, percentile
from bench.run import PY, ROOT, Served, run_load

SYSTEMS = ("aio", "gevent", "grpc.aio")
CALLERS = (1, 64)
FIGURES = ("calls_per_s", "p50_ms", "p99_ms", "client_cpu_us_per_call", "server_cpu_us_per_call")


def measure(rounds: int = 3, duration: float = 2.0, callers: Sequence[int] = CALLERS,
            systems: Sequence[str] = SYSTEMS) -> List[dict]:
    """One row per system and caller count: the medians over ``rounds`` of ``duration``-second
    measurements, ``rounds_calls_per_s``, and for ``aio`` its ratio to ``gevent``."""
    from framework.testing import NodeProcess, ProcessGroup
    group = ProcessGroup()
    try:
        etcd = group.start_etcd()
        node = group.add(NodeProcess("demo_hello.service", etcd.endpoint, ttl=10, cwd=ROOT).start())
        targets = {"aio": (etcd.endpoint, node.pid), "gevent": (etcd.endpoint, node.pid)}
        if "grpc.aio" in systems:
            served = group.add(Served([PY, "-m", "bench.peers", "grpc"]))
            targets["grpc.aio"] = (str(served.port), served.proc.pid)
        raw: Dict[str, List[List[dict]]] = {s: [] for s in systems}
        for r in range(rounds):
            for system in list(systems[r % len(systems):]) + list(systems[:r % len(systems)]):
                target, pid = targets[system]
                raw[system].append(_one(system, target, duration, callers, pid))
    finally:
        group.close()
    rows = []
    for system in systems:
        for i, count in enumerate(callers):
            runs = [measured[i] for measured in raw[system]]
            rows.append({"system": system, "callers": count,
                         **{k: statistics.median(run[k] or 0.0 for run in runs) for k in FIGURES},
                         "errors": sum(run["errors"] for run in runs),
                         "rounds_calls_per_s": [round(run["calls_per_s"]) for run in runs]})
    gevent = {row["callers"]: row["calls_per_s"] for row in rows if row["system"] == "gevent"}
    for row in rows:
        if row["system"] == "aio" and gevent.get(row["callers"]):
            row["vs_gevent"] = round(row["calls_per_s"] / gevent[row["callers"]], 3)
    return rows


def _one(system: str, target: str, seconds: float, callers: Sequence[int], pid: int) -> List[dict]:
    extra = {"server-pid": pid}
    if system == "gevent":
        return run_load("framework", target, seconds, callers, **extra)["results"]

    done = subprocess.run([PY, "-m", "bench.aio", "load", system, target, "--seconds", str(seconds),
                           "--callers", ",".join(map(str, callers)), "--server-pid", str(pid)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    if done.returncode != 0:
        raise RuntimeError(f"load {system} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["results"]


# ---- one measurement, in its own process -------------------------------------------------------

async def _callers(call: Callable[[], Awaitable[str]], callers: int, seconds: float,
                   warmup: float, server_pid: int) -> dict:
    """``bench.load.measure`` with asyncio tasks as the callers."""
    state = {"measuring": False, "stop": False}
    latencies: List[float] = []
    errors = [0]
    clock = time.perf_counter

    async def caller():
        record = latencies.append
        while not state["stop"]:
            t0 = clock()
            try:
                reply = await call()
            except Exception:
                errors[0] += 1
                continue
            if state["measuring"]:
                record(clock() - t0)
            if reply != "hello:world":
                errors[0] += 1

    tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
    await asyncio.sleep(warmup)
    latencies.clear()
    errors[0] = 0
    state["measuring"] = True
    cpu0, server0 = _cpu(), _proc_cpu(server_pid)
    started = clock()
    await asyncio.sleep(seconds)
    state["measuring"] = False
    elapsed = clock() - started
    cpu, server_cpu = _cpu() - cpu0, _proc_cpu(server_pid) - server0
    n = len(latencies)
    state["stop"] = True
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    values = sorted(latencies[:n])
    return {"callers": callers, "calls": n, "calls_per_s": n / elapsed, "errors": errors[0],
            "p50_ms": percentile(values, 0.50) * 1000, "p99_ms": percentile(values, 0.99) * 1000,
            "client_cpu_us_per_call": cpu / max(n, 1) * 1e6,
            "server_cpu_us_per_call": server_cpu / max(n, 1) * 1e6 if server_pid else None}


async def _load(system: str, target: str, callers: Sequence[int], seconds: float,
                warmup: float, server_pid: int) -> List[dict]:
    if system == "aio":
        from framework.aio import Client
        async with Client(etcd=target, timeout=5.0) as client:
            # exactly what a user writes, proxy lookups included
            return [await _callers(lambda: client.HelloService.Hello("world"), c, seconds, warmup,
                                   server_pid) for c in callers]
    import grpc
    from bench.peers import GRPC_METHOD
    async with grpc.aio.insecure_channel(f"127.0.0.1:{target}") as channel:
        stub = channel.unary_unary(GRPC_METHOD, request_serializer=str.encode,
                                   response_deserializer=bytes.decode)
        return [await _callers(lambda: stub("world"), c, seconds, warmup, server_pid)
                for c in callers]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--callers", default=",".join(map(str, CALLERS)))
    args, rest = p.parse_known_args(argv)
    callers = [int(c) for c in args.callers.split(",")]
    if rest[:1] == ["load"]:   # one measurement: load SYSTEM TARGET [--server-pid N]
        q = argparse.ArgumentParser()
        q.add_argument("system", choices=("aio", "grpc.aio"))
        q.add_argument("target")
        q.add_argument("--warmup", type=float, default=0.5)
        q.add_argument("--server-pid", type=int, default=0)
        one = q.parse_args(rest[1:])
        results = asyncio.run(_load(one.system, one.target, callers, args.seconds, one.warmup,
                                    one.server_pid))
        print(json.dumps({"system": one.system, "results": results}), flush=True)
        os._exit(0)   # grpc's threads may hold a normal exit up
    started = time.monotonic()
    rows = measure(args.rounds, args.seconds, callers)
    print(f"{args.rounds} interleaved rounds x {args.seconds:.1f} s, "
          f"{time.monotonic() - started:.0f} s in all")
    print(f"{'system':10} {'callers':>7} {'calls/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'cpu us/call client/server':>26} {'rounds':>22}")
    for row in rows:
        cpu = f"{row['client_cpu_us_per_call']:.1f} / {row['server_cpu_us_per_call']:.1f}"
        print(f"{row['system']:10} {row['callers']:>7} {row['calls_per_s']:>9,.0f} "
              f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {cpu:>26} "
              f"{str(row['rounds_calls_per_s']):>22}" +
              (f"   {row['vs_gevent']:.2f}x gevent" if "vs_gevent" in row else ""))
    failed = {f"{row['system']}@{row['callers']}": row["errors"] for row in rows if row["errors"]}
    if failed:
        print(f"failed calls: {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
