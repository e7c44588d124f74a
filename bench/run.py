"""One benchmark run: start etcd, a framework node, the baseline and the peers; measure everything
in 3 interleaved rounds (each round runs every system once, in a rotated order, so drift hits all
alike); report medians as a table on stdout, ``bench/results.json`` and ``bench/results.png``.

Then the scale section (:mod:`bench.scale`: etcd load per 1,000 nodes, fan-out to 1,000 caches,
workers, and the gateway and asyncio rows when their benches exist), each part on its own etcd.

Environment: ``BENCH_ROUNDS`` (3), ``BENCH_SECONDS`` (2.0 per measurement), ``BENCH_SYSTEMS``
(comma list, default all), ``BENCH_SKIP`` (comma list of parts to skip: registry, balancer, scale,
or one part of the scale section: etcd_load, fanout, workers, gateway, aio).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

from framework.devetcd import EtcdProcess
from framework.testing import NodeProcess, ProcessGroup

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "bench")
PY = sys.executable
SYSTEMS = ["framework", "baseline", "pyro5", "grpc", "zerorpc"]
LABELS = {"framework": "framework (this repo)", "baseline": "bare gevent + msgpack",
          "pyro5": "Pyro5", "grpc": "grpcio (sync)", "zerorpc": "zerorpc"}
# peer -> (module to import, pip requirement)
PEERS = {"zerorpc": ("zerorpc", "zerorpc"), "pyro5": ("Pyro5", "Pyro5"), "grpc": ("grpc", "grpcio")}
CALLERS = (1, 64)


def ensure(module: str, requirement: str) -> Optional[str]:
    """Import ``module`` in a child, pip-installing ``requirement`` on first use. -> None or why not."""
    if subprocess.run([PY, "-c", f"import {module}"], capture_output=True).returncode == 0:
        return None
    print(f"installing {requirement} ...", flush=True)
    done = subprocess.run([PY, "-m", "pip", "install", "--quiet", requirement],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"pip install {requirement} failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    if subprocess.run([PY, "-c", f"import {module}"], capture_output=True).returncode != 0:
        return f"{module} installed but does not import"
    return None


class Served:
    """A server process that prints ``ready <port>`` when it listens."""

    def __init__(self, args: List[str], env: Optional[dict] = None):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True, cwd=ROOT,
                                     env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})),
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.close()
            raise RuntimeError(f"{args} did not start: {line!r}")
        self.port = int(line.split()[1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_load(system: str, target: str, seconds: float, callers=CALLERS, **extra) -> dict:
    args = [PY, "-m", "bench.load", system, str(target), "--seconds", str(seconds),
            "--callers", ",".join(map(str, callers))]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    if done.returncode != 0:
        raise RuntimeError(f"load {system} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(rounds: List[dict]) -> List[dict]:
    """Per caller count: the median of each figure over the rounds."""
    out = []
    for i, first in enumerate(rounds[0]["results"]):
        rows = [r["results"][i] for r in rounds]
        out.append({"callers": first["callers"],
                    **{k: statistics.median(row[k] for row in rows)
                       for k in ("calls_per_s", "p50_ms", "p99_ms", "client_cpu_us_per_call")},
                    "server_cpu_us_per_call": statistics.median(
                        row.get("server_cpu_us_per_call") or 0.0 for row in rows),
                    "errors": sum(row["errors"] for row in rows),
                    "rounds_calls_per_s": [round(row["calls_per_s"]) for row in rows]})
    return out


def _servers(group: ProcessGroup, systems: List[str], skip: set):
    """etcd, the framework node, the baseline and peer servers, the balancer cases' nodes:
    ``(etcd, node, targets, pids, balancer_cases)``."""
    etcd = group.add(EtcdProcess().start())
    node = group.add(NodeProcess("demo_hello.service", etcd.endpoint, ttl=10, cwd=ROOT,
                                 extra_args=()).start())
    targets = {"framework": etcd.endpoint}
    pids = {"framework": node.pid}
    if "baseline" in systems:
        served = group.add(Served([PY, "-m", "bench.baseline", "serve"]))
        targets["baseline"], pids["baseline"] = served.port, served.proc.pid
    for peer in ("pyro5", "grpc", "zerorpc"):
        if peer in systems:
            served = group.add(Served([PY, "-m", "bench.peers", peer]))
            targets[peer], pids[peer] = served.port, served.proc.pid
    balancer_cases = []
    if "balancer" not in skip:
        for case, delays in (("equal", (0, 0)), ("one slow (5 ms)", (0, 5))):
            prefix = "/bench-eq/" if case == "equal" else "/bench-slow/"
            for delay in delays:
                group.add(NodeProcess("bench.slow_service", etcd.endpoint, ttl=10, cwd=ROOT,
                                      prefix=prefix, env={"BENCH_DELAY_MS": str(delay)}).start())
            balancer_cases.append((case, prefix))
    return etcd, node, targets, pids, balancer_cases


def _rounds(systems, targets, pids, balancer_cases, endpoint, rounds, seconds, started):
    """The interleaved rounds: ``(raw, braw)``, every measurement of every system and case."""
    raw: Dict[str, List[dict]] = {s: [] for s in systems}
    braw: Dict[str, List[dict]] = {}
    for r in range(rounds):
        order = systems[r % len(systems):] + systems[:r % len(systems)]
        for system in order:
            raw[system].append(run_load(system, targets[system], seconds,
                                        **{"server-pid": pids[system]}))
        for case, prefix in balancer_cases:
            for policy in ("rr", "p2c"):
                braw.setdefault(f"{case}|{policy}", []).append(run_load(
                    "framework", endpoint, seconds, prefix=prefix, balancer=policy))
        print(f"round {r + 1}/{rounds} done ({time.monotonic() - started:.0f} s)", flush=True)
    return raw, braw


def _registry(endpoint: str) -> dict:
    done = subprocess.run([PY, "-m", "bench.registry", endpoint], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    if done.returncode != 0:
        raise RuntimeError(f"registry bench failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    seconds = float(os.environ.get("BENCH_SECONDS", "2.0"))
    systems = [s for s in os.environ.get("BENCH_SYSTEMS", ",".join(SYSTEMS)).split(",") if s]
    skip = set(os.environ.get("BENCH_SKIP", "").split(","))
    started = time.monotonic()
    skipped: Dict[str, str] = {}
    for peer, (module, requirement) in PEERS.items():
        if peer in systems:
            why = ensure(module, requirement)
            if why:
                skipped[peer] = why
                print(f"skipping {peer}: {why}", flush=True)
    systems = [s for s in systems if s not in skipped]

    group = ProcessGroup()
    try:
        etcd, node, targets, pids, balancer_cases = _servers(group, systems, skip)
        print(f"etcd {etcd.endpoint}, node {node.address}; {rounds} rounds x {seconds:.1f} s per "
              f"measurement", flush=True)
        raw, braw = _rounds(systems, targets, pids, balancer_cases, etcd.endpoint, rounds,
                            seconds, started)
        registry = None if "registry" in skip else _registry(etcd.endpoint)
    finally:
        group.close()
    scale = None
    if "scale" not in skip:   # after the rounds' servers are gone: each part starts its own
        from bench import scale as scale_bench
        scale = scale_bench.measure(skip)

    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, "
                   f"Python {platform.python_version()}, {platform.platform(terse=True)}",
        "rounds": rounds, "seconds_per_measurement": seconds,
        "systems": {s: median_of(raw[s]) for s in systems},
        "skipped": skipped,
        "balancer": {k: median_of(v) for k, v in braw.items()},
        "registry": registry,
        "scale": scale,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    results["ratios"] = ratios(results["systems"])
    _write(results)
    return 0


def _write(results: dict) -> None:
    """The report on stdout, bench/results.json and, with matplotlib, bench/results.png."""
    from bench import report
    print(report.table(results), flush=True)
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    why = ensure("matplotlib", "matplotlib")
    if why:
        print(f"no chart: {why}")
    else:
        done = subprocess.run([PY, "-m", "bench.chart", os.path.join(HERE, "results.json"),
                               os.path.join(HERE, "results.png")], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT))
        if done.returncode != 0:
            print("chart failed")


def ratios(systems: Dict[str, List[dict]]) -> Dict[str, float]:
    def cps(system, callers):
        for row in systems.get(system, []):
            if row["callers"] == callers:
                return row["calls_per_s"]
        return None

    out = {}
    for callers in CALLERS:
        fw, base = cps("framework", callers), cps("baseline", callers)
        if fw and base:
            out[f"framework/baseline@{callers}"] = round(fw / base, 3)
        pyro = cps("pyro5", callers)
        if fw and pyro:
            out[f"framework/pyro5@{callers}"] = round(fw / pyro, 3)
    return out


if __name__ == "__main__":
    sys.exit(main())
