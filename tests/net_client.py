"""Run as ``python tests/net_client.py ETCD TIMEOUT CALLERS NODES [BIG]`` inside a test network
member: a client that waits until it sees NODES nodes of HelloService, then calls it from CALLERS
threads - BIG of them (default 0) ``HelloService.Big`` with a 1 MB string, the others
``HelloService.Pid`` - reporting on stdout one JSON object per line.

* ``{"change": ..., "added": [...], "removed": [...], "at": t}`` for each discovery change;
* ``{"status": ..., "at": t, "calls", "failed", "by_pid", "nodes", "max", "hedged", "won",
  "refused"}`` every 0.1 s (``hedged``/``won``: backups the client sent and that answered first;
  ``refused``: retries its retry budget refused);
* on ``mark`` from stdin, ``{"mark": ...}`` with the figures of the calls that ended since the
  previous mark (or the start): the same ones plus ``p99``, ``p99_big``, ``p99_small``,
  ``over_deadline`` (calls over TIMEOUT + 0.1 s) and the first errors (each with the time it
  ended), ``from``/``to`` its times;
* on ``stop`` from stdin, ``{"final": ...}`` with every figure of the whole run and, per pid, the
  gaps > 0.5 s between two answers from it (when it was out of traffic), then it exits.

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
PAYLOAD = "x" * 1_000_000
_out = threading.Lock()


def emit(obj):
    # one write per line under a lock: print() from two threads can interleave two lines
    with _out:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def gaps(loads):
    """Per pid, [start, end] of each silence > GAP between two of its answers."""
    by_pid = {}
    for load in loads:
        for outcome in list(load.ok):
            by_pid.setdefault(outcome.value, []).append(outcome.at)
    found = {}
    for pid, times in by_pid.items():
        times.sort()
        found[str(pid)] = [[a, b] for a, b in zip(times, times[1:]) if b - a > GAP]
    return found


def p99(seconds):
    if not seconds:
        return 0.0
    seconds = sorted(seconds)
    return seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))]


class Figures:
    """The outcomes of the loads (``small`` calling Pid, ``big`` calling Big), whole or since a
    mark: each load's lists only grow, so a mark is where they ended then."""

    def __init__(self, client, timeout, small, big):
        self.client, self.timeout, self.loads = client, timeout, {"small": small, "big": big}
        self.since = {name: (0, 0) for name in self.loads}
        self.counters = (0, 0, 0)
        self.marked = time.monotonic()

    def _counters(self):
        client = self.client
        return (client.hedging.sent, client.hedging.won, client.budget.refused)

    def status(self):
        outcomes = [o for load in self.loads.values() for o in list(load.ok) + list(load.errors)]
        by_pid = {}
        for load in self.loads.values():
            for pid, count in dict(load.by_result).items():
                by_pid[str(pid)] = by_pid.get(str(pid), 0) + count
        hedged, won, refused = self._counters()
        return {"at": time.monotonic(), "calls": len(outcomes),
                "failed": sum(len(load.errors) for load in self.loads.values()),
                "by_pid": by_pid, "nodes": self.client.nodes("HelloService"),
                "max": max((o.seconds for o in outcomes), default=0.0),
                "hedged": hedged, "won": won, "refused": refused}

    def window(self, since=None, counters=(0, 0, 0), started=0.0):
        """Figures of the calls that ended after ``since`` (per load: (ok, errors) counts)."""
        since = since or {name: (0, 0) for name in self.loads}
        seconds, errors, by_pid, ended, slowest = {}, [], {}, {}, []
        for name, load in self.loads.items():
            ok, failed = list(load.ok), list(load.errors)
            ended[name] = (len(ok), len(failed))
            ok, failed = ok[since[name][0]:], failed[since[name][1]:]
            seconds[name] = [o.seconds for o in ok + failed]
            slowest += [(o.seconds, o.at, name) for o in ok + failed if o.seconds > 0.25]
            errors += [f"{o.value} (ended at {o.at:.3f})" for o in failed]
            for o in ok:
                by_pid[str(o.value)] = by_pid.get(str(o.value), 0) + 1
        now_counters = self._counters()
        every = seconds["small"] + seconds["big"]
        figures = {"from": started, "to": time.monotonic(), "calls": len(every),
                   "failed": len(errors), "errors": errors[:5], "by_pid": by_pid,
                   "max": max(every, default=0.0), "p99": p99(every),
                   "p99_small": p99(seconds["small"]), "p99_big": p99(seconds["big"]),
                   "big_calls": len(seconds["big"]),
                   "over_deadline": sum(s > self.timeout + 0.1 for s in every),
                   "slow": sum(s > 0.25 for s in every),
                   "slowest": [[round(x, 3) for x in o[:2]] + [o[2]] for o in sorted(slowest)[-5:]],
                   **dict(zip(("hedged", "won", "refused"),
                              (now - then for now, then in zip(now_counters, counters))))}
        return figures, ended, now_counters

    def mark(self):
        figures, self.since, self.counters = self.window(self.since, self.counters, self.marked)
        self.marked = figures["to"]
        return figures


def main():
    endpoint, timeout, callers, expect = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:5])
    big = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    if not 0 <= big <= callers:
        raise SystemExit(f"BIG must be between 0 and CALLERS, not {big}")
    client = framework.Client(etcd=endpoint, timeout=timeout)
    wait_until(lambda: len(client.nodes("HelloService")) >= expect, timeout=20,
               message=f"{expect} nodes listed")
    client.discovery.subscribe(lambda service, added, removed, snapshot: emit(
        {"change": service, "added": [n.address for n in added],
         "removed": [n.address for n in removed], "at": time.monotonic()}))
    small = Load(client.HelloService.Pid, callers=callers - big, join_timeout=timeout + 5)
    large = Load(lambda: client.HelloService.Big(PAYLOAD), callers=big, join_timeout=timeout + 5)
    figures = Figures(client, timeout, small, large)
    small.start()
    large.start()
    done = threading.Event()

    def report():
        while not done.wait(0.1):
            emit({"status": True, **figures.status()})

    threading.Thread(target=report, daemon=True).start()
    for line in sys.stdin:
        if line.strip() == "stop":
            break
        if line.strip() == "mark":
            emit({"mark": True, **figures.mark()})
    done.set()
    small.stop()
    large.stop()
    whole = figures.window()[0]
    emit({"final": True, **figures.status(), **{k: whole[k] for k in (
        "errors", "over_deadline", "slow", "slowest", "p99", "p99_small", "p99_big", "big_calls")},
        "gaps": gaps([small, large])})
    client.close()


main()
