"""Run as ``python tests/overload_probe.py ETCD NODES OVERLOAD_SECONDS``: issue 9's overload scenario,
from a gevent-patched client, against NODES nodes serving ``Burn.Cpu`` (about 2 ms of CPU a call).

1. **Capacity.** 24 closed-loop callers for 3 s: the calls/s at the cluster's knee.
2. **Calm.** Open-loop arrivals (at a fixed rate, whatever the answers) at 0.5x capacity for 2 s:
   the normal p99.
3. **Overload.** 2x capacity for OVERLOAD_SECONDS: goodput (calls that succeeded within their
   deadline, per second), what the nodes received (from their metrics) against what was issued.
4. **Recovery.** 0.5x again for 4 s: p99 per 0.25 s, and of the calls sent 2 s after the drop.

Every call has a 1 s deadline. Prints one JSON line per phase.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

import framework  # noqa: E402
from framework.testing import Load, scrape_metrics, wait_until  # noqa: E402

DEADLINE = 1.0
#: seconds the nodes' admission limits get to adapt once the overload begins: goodput is measured
#: after them (and reported for them on its own)
ADAPT = 2.0


def p99(latencies):
    ordered = sorted(latencies)
    return ordered[int(0.99 * (len(ordered) - 1))] if ordered else None


def received(client):
    """``(received, shed)``: calls the nodes received so far (run, refused as overloaded, or
    skipped as expired), and those they refused."""
    total = shed = 0.0
    for address in client.nodes("Burn"):
        for (name, _), value in scrape_metrics(address, timeout=5).items():
            if name in ("framework_calls_total", "framework_calls_shed_total"):
                total += value
            if name == "framework_calls_shed_total":
                shed += value
    return total, shed


def open_loop(client, rate, seconds):
    """Arrivals every 1/rate s for ``seconds``; returns [(sent_at, latency or None, error)]."""
    outcomes = []

    def one(sent):
        try:
            client.call("Burn.Cpu", [2], timeout=DEADLINE)
            outcomes.append((sent, time.monotonic() - sent, None))
        except framework.RpcError as exc:
            outcomes.append((sent, time.monotonic() - sent, type(exc).__name__))

    group = gevent.pool.Group()
    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        if due - start >= seconds:
            break
        delay = due - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        group.spawn(one, due)
        n += 1
    group.join(timeout=DEADLINE + 2)
    return n, outcomes


def main():
    etcd, nodes, overload_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    client = framework.Client(etcd=etcd, timeout=DEADLINE)
    wait_until(lambda: len(client.nodes("Burn")) == nodes, timeout=20)

    with Load(lambda: client.call("Burn.Cpu", [2]), callers=24) as load:
        gevent.sleep(1)   # warm up: connections, the hedge delay, the nodes' windows
        before, t0 = len(load.ok), time.monotonic()
        gevent.sleep(3)   # the measuring window itself, not a wait for a condition
        capacity = (len(load.ok) - before) / (time.monotonic() - t0)
    print(json.dumps({"phase": "capacity", "calls_per_s": capacity,
                      "errors": len(load.errors)}), flush=True)

    _, calm = open_loop(client, 0.5 * capacity, 2)
    normal = p99([o[1] for o in calm if o[2] is None])
    print(json.dumps({"phase": "calm", "p99": normal,
                      "failed": sum(1 for o in calm if o[2])}), flush=True)

    (got, shed), hedges, refused = received(client), client.hedging.sent, client.budget.refused
    began = time.monotonic()
    issued, over = open_loop(client, 2 * capacity, overload_seconds)
    got_after, shed_after = received(client)
    good = [o for o in over if o[2] is None and o[1] <= DEADLINE]
    # goodput once the nodes' admission limits have adapted (ADAPT seconds), and before
    steady = [o for o in good if o[0] >= began + ADAPT]
    adapting = len(good) - len(steady)
    errors = {}
    for o in over:
        if o[2]:
            errors[o[2]] = errors.get(o[2], 0) + 1
    print(json.dumps({"phase": "overload", "offered_per_s": 2 * capacity, "issued": issued,
                      "goodput_per_s": len(steady) / (overload_seconds - ADAPT),
                      "goodput_adapting_per_s": adapting / ADAPT, "received": got_after - got,
                      "shed": shed_after - shed,
                      "errors": errors, "max_latency": max(o[1] for o in over),
                      "hedges": client.hedging.sent - hedges,
                      "retries_refused": client.budget.refused - refused,
                      "rate_ejections": client.health.rate_ejections}), flush=True)

    start = time.monotonic()
    _, after = open_loop(client, 0.5 * capacity, 4)
    buckets = []
    for i in range(16):
        lat = [o[1] for o in after
               if o[2] is None and start + i * 0.25 <= o[0] < start + (i + 1) * 0.25]
        buckets.append(p99(lat))
    settled = p99([o[1] for o in after if o[2] is None and o[0] >= start + 2])
    print(json.dumps({"phase": "recovery", "p99_per_quarter_second": buckets,
                      "p99_after_2s": settled, "failed": sum(1 for o in after if o[2])}),
          flush=True)
    client.close()


if __name__ == "__main__":
    main()
