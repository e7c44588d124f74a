"""Pre-fork applications: a Client made before ``fork()`` works in the child, and the parent's keeps
working (gunicorn --preload, Celery's prefork pool, multiprocessing's fork start method)."""

import multiprocessing
import os
import threading
import time

from framework.testing import ForkedChild, wait_until
from tests.probes import start_probe

#: a gevent-patched caller that forks (run with ``python -c``): both processes call at once; after
#: the fork the parent registers a node of another watched service, and each process waits until its
#: cache shows it. The child reports over a pipe, the parent prints both reports.
GREEN_FORK = """
from gevent import monkey
monkey.patch_all()
import json, os, sys, time
import framework
from framework.testing import wait_until
from tests.test_fork import hammer
client = framework.Client(etcd=sys.argv[1], timeout=5)
client.HelloService.Echo("warm")
assert client.nodes("Joiner") == []

def report(tag, seconds):
    seen = hammer(client, tag, seconds, callers=4)
    start = time.monotonic()
    wait_until(lambda: client.nodes("Joiner") == ["10.9.9.9:9"], timeout=10)
    seen["joined_after"] = time.monotonic() - start
    seen["resyncs"] = {s: v["resyncs"] for s, v in client.discovery.stats().items()}
    return seen

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.write(w, json.dumps(report("child", 1.0)).encode())
    finally:
        os._exit(0)
os.close(w)
client.discovery.etcd.put("/services/Joiner/one", "10.9.9.9:9")
parent = report("parent", 1.0)
child = json.loads(os.read(r, 65536))
os.waitpid(pid, 0)
print(json.dumps({"parent": parent, "child": child, "parent_after": report("after", 0.2)}))
"""


def hammer(client, tag, seconds, callers=2):
    """Call ``Echo`` with a distinct argument per call from ``callers`` threads for ``seconds``:
    ``{"calls", "mismatches", "errors"}`` (a mismatch is an answer meant for another call)."""
    end = time.monotonic() + seconds
    results = []

    def run(caller):
        calls, mismatches, errors = 0, 0, []
        while time.monotonic() < end:
            arg = f"{tag}-{caller}-{calls + len(errors)}"
            try:
                answer = client.HelloService.Echo(arg)
            except Exception as exc:
                errors.append(repr(exc))
                continue
            calls += 1
            mismatches += answer != {"args": [arg], "kwargs": {}}
        results.append((calls, mismatches, errors))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 10)
    return {"calls": sum(r[0] for r in results), "mismatches": sum(r[1] for r in results),
            "errors": [e for r in results for e in r[2]][:5]}


def _warm(client, nodes):
    """Calls until the client holds a connection to each of ``nodes`` (and watches the service)."""
    wait_until(lambda: len(client.nodes("HelloService")) == len(nodes), timeout=10)
    wait_until(lambda: client.HelloService.Echo(0) and len(client.pool._conns) == len(nodes),
               timeout=10, message="a connection to every node")
    return dict(client.pool._conns)


def test_parent_and_forked_child_call_at_once_and_never_get_each_others_answers(
        serve_node, make_client, processes):
    nodes = [serve_node("tests.services"), serve_node("tests.services")]
    client = make_client(timeout=5)
    before = _warm(client, nodes)

    child = processes.add(ForkedChild(lambda: hammer(client, "child", 1.5)))
    parent = hammer(client, "parent", 1.5)
    report = child.report(timeout=10)

    assert "error" not in report, report
    counts = {"parent": parent, "child": report["result"]}
    print(counts)
    for who, seen in counts.items():
        assert seen["mismatches"] == 0 and seen["errors"] == [], (who, seen)
        assert seen["calls"] > 50, (who, seen)
    # the child closed only its own copies: the parent's connections are the ones from before
    assert client.pool._conns == before and all(c.alive for c in before.values())
    assert client.HelloService.Echo("after") == {"args": ["after"], "kwargs": {}}


def test_a_node_that_joins_after_the_fork_is_seen_and_called_by_the_child(
        serve_node, make_client, processes):
    first = serve_node("tests.services")
    client = make_client(timeout=5)
    before = _warm(client, [first])
    resyncs = client.discovery.stats()["HelloService"]["resyncs"]

    def in_child():
        joined = wait_until(lambda: set(client.nodes("HelloService")) - {first.address},
                            timeout=10, message="the child's cache to show the new node")
        pids = set()
        wait_until(lambda: pids.add(client.HelloService.Pid()) or len(pids) == 2, timeout=10,
                   message="a call from the child to reach the new node")
        return {"joined": sorted(joined), "pids": sorted(pids)}

    child = processes.add(ForkedChild(in_child))
    second = serve_node("tests.services")
    report = child.report(timeout=15)

    assert report == {"result": {"joined": [second.address],
                                 "pids": sorted([first.pid, second.pid])}}
    # the parent's watch and connection lived on through the child's life and exit
    wait_until(lambda: second.address in client.nodes("HelloService"), timeout=5)
    assert client.discovery.stats()["HelloService"]["resyncs"] == resyncs
    assert client.pool._conns[first.address] is before[first.address]
    assert before[first.address].alive
    pids = set()
    wait_until(lambda: pids.add(client.HelloService.Pid()) or len(pids) == 2, timeout=10,
               message="the parent's calls to reach both nodes")


def _worker_calls(client, pipe):
    pipe.send((os.getpid(), hammer(client, f"worker{os.getpid()}", 0.5)))
    pipe.close()


def test_multiprocessing_fork_workers_share_the_callers_client(serve_node, make_client):
    nodes = [serve_node("tests.services")]
    client = make_client(timeout=5)
    _warm(client, nodes)
    context = multiprocessing.get_context("fork")
    pipes, workers = [], []
    for _ in range(2):
        mine, theirs = context.Pipe(duplex=False)
        workers.append(context.Process(target=_worker_calls, args=(client, theirs)))
        pipes.append(mine)
        workers[-1].start()
    parent = hammer(client, "parent", 0.5)
    reports = []
    try:
        for pipe in pipes:
            assert pipe.poll(10), "a worker sent no report"
            reports.append(pipe.recv())
        for worker in workers:
            worker.join(10)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    assert sorted(pid for pid, _ in reports) == sorted(w.pid for w in workers)
    for seen in [parent] + [r for _, r in reports]:
        assert seen["mismatches"] == 0 and seen["errors"] == [] and seen["calls"] > 10, seen


def test_a_gevent_patched_caller_forks_and_both_sides_keep_calling(etcd, serve_node, processes):
    serve_node("tests.services")
    proc, parsed = start_probe(processes, "-c", GREEN_FORK, etcd.endpoint)
    assert proc.wait(20) == 0, proc.stderr.read()
    (final,) = parsed()
    for who, seen in final.items():
        assert seen["mismatches"] == 0 and seen["errors"] == [] and seen["calls"] > 10, (who, seen)
    # both caches showed the node registered after the fork: the child's on watches of its own
    # (its inherited worker greenlets were ended), the parent's on its watches, never disturbed
    assert final["child"]["joined_after"] < 10
    assert final["parent_after"]["resyncs"] == {"HelloService": 0, "Joiner": 0}
