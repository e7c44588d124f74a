"""Run as ``python tests/net_client.py ETCD TIMEOUT CALLERS NODES`` inside a test network member: a
client that waits until it sees NODES nodes of HelloService, then calls ``HelloService.Pid`` from
CALLERS threads, reporting on stdout one JSON object per line.

* ``{"change": ..., "added": [...], "removed": [...], "at": t}`` for each discovery change;
* ``{"status": ..., "at": t, "calls", "failed", "by_pid", "nodes", "max"}`` every 0.1 s;
* on ``stop`` from stdin, ``{"final": ...}`` with every figure and, per pid, the gaps > 0.5 s
  between two answers from it (when it was out of traffic), then it exits.

Times are ``time.monotonic()``, which every process on the host shares, so the test can compare
them with its own.
"""
import json
import sys
import threading
import time

import framework
from framework.testing import Load, wait_until

GAP = 0.5
_out = threading.Lock()


def emit(obj):
    # one write per line under a lock: print() from two threads can interleave two lines
    with _out:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def gaps(load):
    """Per pid, [start, end] of each silence > GAP between two of its answers."""
    by_pid = {}
    for outcome in list(load.ok):
        by_pid.setdefault(outcome.value, []).append(outcome.at)
    found = {}
    for pid, times in by_pid.items():
        times.sort()
        found[str(pid)] = [[a, b] for a, b in zip(times, times[1:]) if b - a > GAP]
    return found


def figures(load, client):
    outcomes = list(load.ok) + list(load.errors)
    return {"at": time.monotonic(), "calls": len(outcomes), "failed": len(load.errors),
            "by_pid": {str(k): v for k, v in dict(load.by_result).items()},
            "nodes": client.nodes("HelloService"),
            "max": max((o.seconds for o in outcomes), default=0.0)}


def main():
    endpoint, timeout, callers, expect = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:5])
    client = framework.Client(etcd=endpoint, timeout=timeout)
    wait_until(lambda: len(client.nodes("HelloService")) >= expect, timeout=20,
               message=f"{expect} nodes listed")
    client.discovery.subscribe(lambda service, added, removed, snapshot: emit(
        {"change": service, "added": [n.address for n in added],
         "removed": [n.address for n in removed], "at": time.monotonic()}))
    load = Load(client.HelloService.Pid, callers=callers, join_timeout=timeout + 5).start()
    done = threading.Event()

    def report():
        while not done.wait(0.1):
            emit({"status": True, **figures(load, client)})

    threading.Thread(target=report, daemon=True).start()
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    done.set()
    load.stop()
    seconds = [o.seconds for o in list(load.ok) + list(load.errors)]
    emit({"final": True, **figures(load, client), "errors": [e.value for e in load.errors[:5]],
          "over_deadline": sum(s > timeout + 0.1 for s in seconds),
          "slow": sum(s > 0.25 for s in seconds), "gaps": gaps(load)})
    client.close()


main()
