"""Pre-fork serving (issue 11): ``serve --workers N`` runs N worker processes on one port under a
supervisor that holds the one registration, restarts dead workers, drains them all on SIGTERM and
replaces them one by one on SIGHUP - with no lost call, non-idempotent ones included."""
import os
import signal

from framework.testing import Load, wait_until
from tests.test_cli import cli


def _workers(make_client, want, timeout=15.0):
    """The pids answering on the node's port, found by opening connections (one per client: a
    client multiplexes its calls on one connection, which the kernel gives to one worker) until
    ``want(pids)`` holds."""
    pids = set()

    def probe():
        client = make_client(timeout=3)
        pids.add(client.HelloService.Pid())
        client.close()
        return want(pids) and set(pids)
    return wait_until(probe, timeout=timeout, interval=0.0, message=f"workers ({pids} so far)")


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_workers_share_one_port_and_one_registration_and_are_restarted(serve_node, make_client,
                                                                      etcd):
    node = serve_node("tests.services", extra_args=["--workers", "2"])
    client = make_client(timeout=3)
    wait_until(lambda: client.nodes("HelloService"), message="the node to be listed")
    assert client.nodes("HelloService") == [node.address]   # one registration for the port
    pids = _workers(make_client, lambda p: len(p) == 2)
    assert node.pid not in pids   # the supervisor serves no call itself
    listing = cli("ls", "HelloService", "--etcd", etcd.endpoint).stdout
    assert listing.count(node.address) == 1, listing

    victim = sorted(pids)[0]
    with Load(lambda: client.HelloService.Pid(), callers=4) as load:
        load.wait_calls(100)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: any(r.at > 0 and r.value != victim for r in load.ok[-10:]),
                   message="calls to go on after the kill")
        load.wait_calls(100)
    assert load.errors == [], load.errors[:3]   # idempotent calls: re-sent after the kill
    now = _workers(make_client, lambda p: len(p - {victim}) == 2)   # the dead one was replaced
    assert victim not in now or not _alive(victim)
    assert node.alive


def test_sighup_replaces_every_worker_under_non_idempotent_load(serve_node, make_client):
    node = serve_node("tests.services", extra_args=["--workers", "2"])
    clients = [make_client(timeout=5) for _ in range(4)]   # 4 connections, spread by the kernel
    wait_until(lambda: clients[0].nodes("WorkService"), message="the node to be listed")
    before = _workers(make_client, lambda p: len(p) == 2)
    turn = iter(range(10**9))
    with Load(lambda: clients[next(turn) % 4].WorkService.Work(2), callers=8) as load:
        load.wait_calls(200)
        node.signal(signal.SIGHUP)
        wait_until(lambda: not any(_alive(pid) for pid in before), timeout=30,
                   message="both old workers to have drained and exited")
        load.wait_calls(200)
    after = _workers(make_client, lambda p: len(p) == 2)
    print(f"\nSIGHUP under load: {load.calls} non-idempotent calls, {len(load.errors)} failed; "
          f"workers {sorted(before)} -> {sorted(after)}")
    assert load.errors == [], load.errors[:3]
    assert not after & before and node.alive
    assert clients[0].nodes("WorkService") == [node.address]


def test_sigterm_drains_every_worker_with_no_lost_call(serve_node, make_client):
    nodes = [serve_node("tests.services", extra_args=["--workers", "2"]) for _ in range(2)]
    client = make_client(timeout=5)
    wait_until(lambda: len(client.nodes("WorkService")) == 2, message="both nodes listed")
    with Load(lambda: client.WorkService.Work(2), callers=8) as load:
        load.wait_calls(200)
        nodes[0].terminate()
        assert nodes[0].wait(30) == 0
        load.wait_calls(200)
    print(f"\nSIGTERM to a 2-worker node under load: {load.calls} non-idempotent calls, "
          f"{len(load.errors)} failed")
    assert load.errors == [], load.errors[:3]
    assert client.nodes("WorkService") == [nodes[1].address]


def test_one_client_reaches_every_worker_of_a_node(serve_node, make_client, etcd):
    # the record says "workers": 2, so a client keeps 4 connections to the node and its calls
    # take turns on them: one calling process (a gateway, say) uses both workers - unless the
    # kernel gave all 4 to one worker (1 in 8), hence a few fresh clients at most
    node = serve_node("tests.services", extra_args=["--workers", "2"])
    assert "workers=2" in wait_until(
        lambda: (lambda out: out if "workers=2" in out else None)(
            cli("ls", "HelloService", "--etcd", etcd.endpoint).stdout),
        message="the record to say workers=2")
    reached = []

    def one_client_reaches_both():
        client = make_client(timeout=3)
        pids = {client.HelloService.Pid() for _ in range(40)}
        client.close()
        reached.append(len(pids))
        return len(pids) == 2 and pids
    pids = wait_until(one_client_reaches_both, timeout=20, interval=0.0,
                      message="a client whose calls reach both workers")
    print(f"\nworkers reached per fresh client: {reached}")
    assert node.pid not in pids
