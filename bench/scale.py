"""The scale section of ``make bench``: what etcd and each process pay as a deployment grows.

:func:`measure` runs each part in processes (and on an etcd) of its own, after the per-call rounds
of :mod:`bench.run`, and returns ``{part: figures}``; a part that fails or cannot run says why
(``{"error": ...}`` or ``{"missing": ...}``) and the others still run:

* ``etcd_load`` - etcd requests, new connections and CPU per second for 1,000 registered nodes
  (:mod:`bench.etcd_load`, keep-alive connections, TTL 10 s, 10 s of steady state);
* ``fanout`` - one registration reaching 1,000 discovery caches with a watch each, then with
  the caches of each process sharing one (:mod:`bench.fanout`): propagation percentiles and
  etcd's CPU;
* ``workers`` - calls/s with 1 and 2 workers, node and gateway (:mod:`bench.workers`, 2 rounds of
  2 s: a short look; the bench's own defaults measure longer);
* ``gateway`` and ``aio`` - the rows of ``bench.gateway.measure()`` and ``bench.aio.measure()``
  when those modules exist.

Memory per node and watch connections for 1,000 services are measured by the registry part
(:mod:`bench.registry`, ``results["registry"]["scale"]``); the report shows them in this section.
``BENCH_SKIP`` names the parts to leave out (``etcd_load,fanout,workers,gateway,aio``).
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import time
import traceback
from typing import Callable, Dict, Iterable

from bench.run import PY, ROOT

PARTS = ("etcd_load", "fanout", "workers", "gateway", "aio")
#: a line of ``python -m bench.workers``
_WORKERS_LINE = re.compile(r"^(?P<what>.+?): 1 worker (?P<one>[\d,.]+)/s, "
                           r"2 workers (?P<two>[\d,.]+)/s, ratio (?P<ratio>[\d.]+)x")


def etcd_load() -> dict:
    from bench import etcd_load as bench
    row = bench.measure(nodes=1000, procs=4, ttl=10, seconds=10.0, scenarios=["plain-reuse"])[0]
    per = 1000 / row["nodes"]
    return {**row, "per_1000_nodes": {
        "requests_per_s": row["etcd_grpc_calls_per_s"] * per,
        "new_connections_per_s": row["new_connections_per_s"] * per,
        "connections_held": row["established"] * per, "etcd_cpu_pct": row["etcd_cpu_pct"] * per}}


def fanout() -> dict:
    """A watch per cache (as 1,000 processes would), then the caches of a process sharing one."""
    from bench import fanout as bench
    return {**bench.measure(watchers=1000, procs=4, registrations=20),
            "shared": bench.measure(watchers=1000, procs=4, registrations=20, share=True)}


def workers() -> dict:
    done = subprocess.run([PY, "-m", "bench.workers", "--rounds", "2", "--seconds", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"bench.workers failed: {done.stderr[-2000:]}")
    rows = []
    for line in done.stdout.splitlines():
        m = _WORKERS_LINE.match(line)
        if m:
            rows.append({"what": m["what"], "one_worker_per_s": float(m["one"].replace(",", "")),
                         "two_workers_per_s": float(m["two"].replace(",", "")),
                         "ratio": float(m["ratio"])})
    if not rows:
        raise RuntimeError(f"bench.workers printed no result: {done.stdout[-1000:]}")
    return {"rows": rows}


def _hook(module: str) -> Callable[[], dict]:
    """``bench.<module>.measure()`` (a list of rows), or why it cannot run."""
    def run() -> dict:
        name = f"bench.{module}"
        if importlib.util.find_spec(name) is None:
            return {"missing": f"{name} does not exist yet"}
        measure = getattr(importlib.import_module(name), "measure", None)
        if measure is None:
            return {"missing": f"{name} has no measure()"}
        return {"rows": measure()}
    return run


RUNNERS: Dict[str, Callable[[], dict]] = {"etcd_load": etcd_load, "fanout": fanout,
                                          "workers": workers, "gateway": _hook("gateway"),
                                          "aio": _hook("aio")}


def measure(skip: Iterable[str] = ()) -> Dict[str, dict]:
    """Every part not in ``skip``, one after the other; each with its own ``elapsed_s``."""
    out: Dict[str, dict] = {}
    for part in PARTS:
        if part in skip:
            continue
        started = time.monotonic()
        print(f"scale: {part} ...", flush=True)
        try:
            out[part] = RUNNERS[part]()
        except Exception as exc:   # one part's failure must not lose the others' figures
            traceback.print_exc()
            out[part] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        out[part]["elapsed_s"] = round(time.monotonic() - started, 1)
    return out
