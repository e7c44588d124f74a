"""Discovery propagation and registry scale, measured from a running (gevent-patched) client process.

``python -m bench.registry ETCD_ENDPOINT`` prints one JSON object:

* ``propagation``: for ``n`` registrations, the time from just before the ``put`` is sent to etcd until
  the client's cache listener sees the node, and the same for the ``delete`` (conservative: the put's
  own round trip is included);
* ``scale``: 1,000 services x 10 nodes written straight into etcd with ``Etcd.put``; the client's RSS,
  its first-call latency (fresh clients) and its per-call cost, each with the small and the large
  registry. The client watches all 1,000 services in the large case;
* ``scale.heap``: the Python heap (tracemalloc) a cache of all 10,000 nodes holds per node, and the
  share of it allocated while reading records (``framework/record.py`` and the JSON decoder);
* ``scale.watch_connections``: the connections a process holds to etcd while it watches the 1,000
  services, with the shared watch (the default) and with one watch per service.

``python -m bench.registry ETCD_ENDPOINT heap`` measures only the heap (``scale.heap``).
"""
import sys

if __name__ == "__main__":
    # measured as a gevent client runs; patch before anything imports socket (importing this
    # module from elsewhere, for :func:`record`, patches nothing)
    from gevent import monkey

    monkey.patch_all()

import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from typing import Dict, List, Tuple  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

from framework import Client  # noqa: E402
from framework.discovery import Discovery  # noqa: E402
from framework.etcd import Etcd  # noqa: E402
from framework.testing.wire import established  # noqa: E402

SCALE_PREFIX = "BenchScale"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def record(service: str, address: str) -> str:
    """A registration like a real node's, so the cache holds realistic objects."""
    return json.dumps({"address": address, "service": service,
                       "methods": {"Hello": {"idempotent": True}, "Get": {"idempotent": True},
                                   "Put": {"idempotent": False}},
                       "protocol": "jsonrpc2-msgpack/1", "pid": 4242, "hostname": "bench-host",
                       "version": "0.1.0", "started": 1700000000.0})


def propagation(endpoint: str, n: int = 40) -> dict:
    prefix, service = "/bench-prop/", "PropService"
    etcd = Etcd(endpoint)
    client = Client(etcd=endpoint, prefix=prefix)
    seen = {}
    changed = threading.Event()

    def listener(svc, added, removed, snapshot):
        now = time.perf_counter()
        for node in list(added) + list(removed):
            seen[node.address] = now
        changed.set()

    client.discovery.subscribe(listener)
    client.discovery.watch(service)
    deadline = time.monotonic() + 10
    while not client.discovery.ready(service) and time.monotonic() < deadline:
        gevent.sleep(0.005)
    add_ms, remove_ms = [], []
    for i in range(n):
        address = f"10.77.{i // 200}.{i % 200}:9000"
        key = f"{prefix}{service}/{address}"
        for action, out in (("put", add_ms), ("delete", remove_ms)):
            seen.pop(address, None)
            changed.clear()
            t0 = time.perf_counter()
            if action == "put":
                etcd.put(key, record(service, address))
            else:
                etcd.delete(key)
            while address not in seen:
                if not changed.wait(5):
                    raise RuntimeError(f"{action} of {address} not seen within 5 s")
                changed.clear()
            out.append((seen[address] - t0) * 1000)
        gevent.sleep(0.002)
    client.close()
    return {"n": n, "add_p50_ms": statistics.median(add_ms), "add_max_ms": max(add_ms),
            "remove_p50_ms": statistics.median(remove_ms), "remove_max_ms": max(remove_ms)}


def per_call_us(client: Client, seconds: float = 1.0) -> Tuple[float, float]:
    """(wall, process CPU) microseconds per call, one caller. CPU is the steadier figure on a
    shared machine; both include the node's time only as far as the client waits for it."""
    for _ in range(200):
        client.HelloService.Hello("world")
    n, t0, cpu0 = 0, time.perf_counter(), _cpu()
    end = t0 + seconds
    while True:
        for _ in range(100):
            client.HelloService.Hello("world")
        n += 100
        now = time.perf_counter()
        if now >= end:
            return (now - t0) / n * 1e6, (_cpu() - cpu0) / n * 1e6


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_call(clients: Dict[str, Client], rounds: int = 3) -> Dict[str, dict]:
    """Interleaved rounds over ``clients``, so machine noise hits each alike; medians."""
    samples: Dict[str, list] = {name: [] for name in clients}
    for _ in range(rounds):
        for name, client in clients.items():
            samples[name].append(per_call_us(client))
    return {name: {"per_call_us": statistics.median(w for w, _ in rows),
                   "per_call_cpu_us": statistics.median(c for _, c in rows)}
            for name, rows in samples.items()}


def first_call_ms(endpoint: str, tries: int = 5) -> float:
    times = []
    for _ in range(tries):
        t0 = time.perf_counter()
        client = Client(etcd=endpoint)
        client.HelloService.Hello("world")
        times.append((time.perf_counter() - t0) * 1000)
        client.close()
    return statistics.median(times)


def fill(endpoint: str, services: int, nodes: int) -> List[str]:
    """``services`` x ``nodes`` records written straight into etcd; the service names."""
    etcd = Etcd(endpoint)
    etcd.delete_prefix(f"/services/{SCALE_PREFIX}")
    names = [f"{SCALE_PREFIX}{i:04d}" for i in range(services)]
    pool = gevent.pool.Pool(32)
    for i, name in enumerate(names):
        for j in range(nodes):
            address = f"10.{j}.{i // 250}.{i % 250}:7000"
            pool.spawn(etcd.put, f"/services/{name}/{address}", record(name, address))
    pool.join(raise_error=True)
    etcd.close()
    return names


def watch_all(discovery: Discovery, names: List[str], timeout: float = 120.0) -> float:
    """Seconds until ``discovery`` listed every one of ``names``."""
    t0 = time.perf_counter()
    for name in names:
        discovery.watch(name)
    deadline = time.monotonic() + timeout
    while not all(discovery.ready(n) for n in names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"discovery did not list every service within {timeout} s")
        gevent.sleep(0.01)
    return time.perf_counter() - t0


def heap(endpoint: str, names: List[str]) -> dict:
    """Python heap per cached node (tracemalloc, after a collection), and the share allocated while
    reading records: by framework/record.py and the JSON decoder, the decoded values included."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    discovery = Discovery(Etcd(endpoint))
    watch_all(discovery, names)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    cached = sum(len(discovery.nodes(n)) for n in names)
    diff = after.compare_to(before, "filename")
    total = sum(d.size_diff for d in diff)
    records = sum(d.size_diff for d in diff
                  if d.traceback[0].filename.endswith(("record.py", "json/decoder.py")))
    top = [{"file": d.traceback[0].filename.rsplit("/", 2)[-1], "bytes_per_node": d.size_diff / cached}
           for d in diff[:6]]
    discovery.close()
    discovery.etcd.close()
    return {"cached_nodes": cached, "bytes_per_node": total / cached,
            "records_share": records / total, "top": top}


def _settled(port: int, timeout: float = 10.0) -> int:
    """This process's connections to ``port`` once the count holds still for 0.3 s (a service is
    ready after its list; its watch connects a moment later)."""
    deadline, last = time.monotonic() + timeout, established(port)
    while time.monotonic() < deadline:
        gevent.sleep(0.3)
        now = established(port)
        if now == last:
            return now
        last = now
    return last


def watch_connections(endpoint: str, names: List[str]) -> dict:
    """Connections to etcd of a process watching ``names``: the shared watch (the default), then
    one watch per service (``shared_above`` past their number)."""
    port = int(endpoint.rpartition(":")[2])
    out = {"services": len(names)}
    for mode, shared_above in (("shared", 8), ("per_service", len(names) + 1)):
        base = _settled(port)
        etcd = Etcd(endpoint)
        discovery = Discovery(etcd, shared_above=shared_above)
        out[f"{mode}_list_s"] = watch_all(discovery, names)
        out[f"{mode}_connections"] = _settled(port) - base
        discovery.close()
        etcd.close()
    return out


def scale(endpoint: str, services: int = 1000, nodes: int = 10) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    client = Client(etcd=endpoint)
    small = {"first_call_ms": first_call_ms(endpoint), **per_call({"c": client})["c"],
             "rss_mb": rss_mb()}
    t0 = time.perf_counter()
    names = fill(endpoint, services, nodes)
    fill_s = time.perf_counter() - t0
    watch_s = watch_all(client.discovery, names)
    cached = sum(len(client.discovery.nodes(n)) for n in names)
    rss = rss_mb()
    # the same registry, a client that watches only HelloService: isolates the cost of the cache
    lean = Client(etcd=endpoint)
    calls = per_call({"all": client, "lean": lean})
    large = {"first_call_ms": first_call_ms(endpoint), **calls["all"], "rss_mb": rss,
             "lean_client": calls["lean"]}
    lean.close()
    client.close()
    out = {"services": services, "nodes_per_service": nodes, "registered": services * nodes,
           "cached_nodes": cached, "fill_s": fill_s, "watch_all_s": watch_s,
           "small": small, "large": large,
           "per_call_growth": large["per_call_cpu_us"] / small["per_call_cpu_us"],
           "per_call_growth_vs_lean": (large["per_call_cpu_us"]
                                       / large["lean_client"]["per_call_cpu_us"]),
           "heap": heap(endpoint, names), "watch_connections": watch_connections(endpoint, names)}
    Etcd(endpoint).delete_prefix(f"/services/{SCALE_PREFIX}")
    return out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    endpoint = args[0]
    if args[1:2] == ["heap"]:
        names = fill(endpoint, 1000, 10)
        out = {"heap": heap(endpoint, names)}
        Etcd(endpoint).delete_prefix(f"/services/{SCALE_PREFIX}")
    else:
        out = {"propagation": propagation(endpoint), "scale": scale(endpoint)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
