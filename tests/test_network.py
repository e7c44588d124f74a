"""Gray failures on a real network: the ``test_network`` fixture (framework.testing.netns) puts
etcd, every node and the client in network namespaces of their own on one bridge, and applies faults
with tc in the bridge's namespace, where neither end's TCP sees a drop (as in a real blackhole).

A drop is ``netem loss 100%`` where the kernel has netem, else (as on the 6.18 kernel these were
written on, which lacks it) a ``tbf`` whose bucket is smaller than any packet; the harness test
prints which one ran.
The client is ``tests/net_client.py`` run inside its own namespace; it reports its figures as JSON
lines, with ``time.monotonic()`` times that this process shares.

Needs root and ``ip``/``tc`` (iproute2); without them every test here fails naming what is missing.
Each test prints the figures that docs/reliability.md quotes (run with ``-s`` to see them).
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from framework.etcd import Etcd
from framework.testing import NetworkUnavailable, TestNetwork, wait_until

TTL = 3
HERE = os.path.dirname(os.path.abspath(__file__))


class ClientProbe:
    """``tests/net_client.py`` inside ``member``: the latest status line, every discovery change,
    and the final figures once stopped."""

    def __init__(self, net, member, etcd, timeout, callers, nodes):
        self.timeout = timeout
        self.log = tempfile.TemporaryFile(mode="w+")   # client warnings: a full pipe would block it
        self.proc = net.popen(member, [sys.executable, os.path.join(HERE, "net_client.py"), etcd,
                                       str(timeout), str(callers), str(nodes)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                              text=True)
        self.status, self.final, self.changes, self.garbled = None, None, [], None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                self.garbled = line   # reported by _alive(); reading on keeps the probe unblocked
                continue
            if "change" in msg:
                self.changes.append(msg)
            elif "final" in msg:
                self.final = msg
            else:
                self.status = msg

    def _alive(self):
        assert self.garbled is None, f"client probe printed a garbled line: {self.garbled!r}"
        if self.proc.poll() is not None and self.final is None:
            self.log.seek(0)
            raise AssertionError(f"client probe exited {self.proc.returncode}:\n"
                                 f"{self.log.read()[-3000:]}")

    def wait(self, predicate, timeout, message):
        """The first status line (after now) for which ``predicate(status)`` holds."""
        since = time.monotonic()

        def check():
            self._alive()
            s = self.status
            return s if s and s["at"] > since and predicate(s) else None
        return wait_until(check, timeout=timeout, message=message)

    def calls_of(self, pid):
        return self.status["by_pid"].get(str(pid), 0)

    def change(self, timeout, added=None, removed=None):
        """The first discovery change that added (or removed) the address."""
        def find():
            self._alive()
            return next((c for c in list(self.changes)
                         if added in c["added"] or removed in c["removed"]), None)
        return wait_until(find, timeout=timeout,
                          message=f"a change adding {added} / removing {removed}")

    def stop(self):
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        wait_until(lambda: self._alive() or self.final, timeout=self.timeout + 15,
                   message="final figures")
        return self.final


def world(net, *nodes):
    """etcd, the given nodes and a client member, each in a namespace; returns (endpoint, nodes)."""
    net.add("etcd", *nodes, "client")
    etcd = net.start_etcd("etcd")
    return etcd.endpoint, {m: net.start_node(m, "tests.services", etcd.endpoint, ttl=TTL)
                           for m in nodes}


def registered(net, endpoint, address):
    """Whether etcd lists ``address``, asked from inside etcd's own namespace (no fault there)."""
    kvs = net.call_in("etcd", lambda: Etcd(endpoint, timeout=2).get_prefix("/services/")[1])
    return any(kv.key.endswith("/" + address) for kv in kvs)


def in_traffic(probe, *nodes):
    return probe.wait(lambda s: all(s["by_pid"].get(str(n.pid), 0) > 0 for n in nodes),
                      timeout=10, message="every node answering calls")


def resumed(final, node, after):
    """When ``node`` answered again, after a silence, for the first time after ``after``."""
    ends = [end for start, end in final["gaps"].get(str(node.pid), []) if end > after]
    assert ends, f"no silence of {node.address} that ended after the heal: {final['gaps']}"
    return min(ends)


def _refused_or_lost(net, member, connect):
    try:
        net.call_in(member, connect).close()
    except socket.timeout:
        return True
    return False


def _transfer(net, server, connect, size):
    """Seconds to move ``size`` bytes from member a to b's ``server``."""
    conn = net.call_in("a", connect)
    while True:   # earlier probes wait in the backlog, closed: skip to this connection
        peer, address = server.accept()
        if address == conn.getsockname():
            break
        peer.close()
    with conn, peer:
        conn.settimeout(10)
        started = time.monotonic()
        threading.Thread(target=conn.sendall, args=(b"y" * size,), daemon=True).start()
        got = 0
        while got < size:
            chunk = peer.recv(65536)
            assert chunk, "connection closed early"
            got += len(chunk)
        return time.monotonic() - started


def heal_and_rejoin(net, probe, member: str, node, count: int):
    """Heal ``member``; wait until its node is listed again (it registers again by itself) and
    answers more than ``count`` calls. -> (healed at, listed at, answering at, final status)."""
    net.heal(member)
    healed = time.monotonic()
    back = probe.change(timeout=TTL + 2, added=node.address)["at"]
    probe.wait(lambda s: s["by_pid"].get(str(node.pid), 0) > count, timeout=5,
               message=f"{member} answering calls again")
    final = probe.stop()
    return healed, back, resumed(final, node, healed), final


def test_missing_tools_fail_loudly_naming_them(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(NetworkUnavailable, match="ip and tc from iproute2"):
        TestNetwork()


def test_leftovers_of_a_killed_run_are_removed_and_nothing_else():
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover, live = f"fwt{dead.pid}n0-x", f"fwt{os.getppid()}n0-x"   # a dead and a live creator
    for ns in (leftover, live):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        TestNetwork().close()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert leftover not in names and live in names, names
    finally:
        for ns in (leftover, live):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def test_the_harness_faults_are_real_invisible_to_senders_and_torn_down():
    net = TestNetwork()
    try:
        net.add("a", "b", "c")
        server = net.call_in("b", lambda: socket.create_server((net.address("b"), 7000)))
        connect = lambda: socket.create_connection((net.address("b"), 7000), timeout=0.5)  # noqa
        conn = net.call_in("a", connect)
        server.accept()[0].close()
        net.blackhole("b")
        started = time.monotonic()
        conn.sendall(b"x")   # lost: the sender's TCP must back off as it would on a real blackhole
        assert _refused_or_lost(net, "c", connect), "connected through a blackhole"
        wait_until(lambda: time.monotonic() - started > 1.6, timeout=3)   # a few retransmissions
        ss = subprocess.run([*net.prefix("a"), "ss", "-tin", "dst", net.address("b")],
                            capture_output=True, text=True).stdout
        backoff = int(ss.split("backoff:")[1].split()[0]) if "backoff:" in ss else 0
        conn.close()
        assert backoff >= 2, ss   # a drop the sender saw would be retried at once, not backed off
        net.heal("b")
        net.partition("b", "a")
        assert not _refused_or_lost(net, "c", connect), "c <-> b must flow: only a <-> b is cut"
        assert _refused_or_lost(net, "a", connect), "connected through a partition"
        net.heal()
        fast = _transfer(net, server, connect, 250_000)
        net.thin("b", rate="2mbit")
        thin = _transfer(net, server, connect, 250_000)   # 2 Mbit at 2 Mbit/s: about a second
        print(f"\nharness: drops by {'netem' if net.netem else 'tbf'}; sender backoff {backoff} "
              f"after 1.6 s; 250 kB in {fast * 1000:.1f} ms, thinned to 2mbit {thin:.2f} s")
        assert 0.7 < thin < 3
    finally:
        net.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.name not in names


def test_a_node_cut_off_from_etcd_only_leaves_traffic_and_comes_back_by_itself(test_network):
    net = test_network
    endpoint, nodes = world(net, "a", "b", "c")
    a = nodes["a"]
    probe = ClientProbe(net, "client", endpoint, timeout=5, callers=8, nodes=3)
    in_traffic(probe, *nodes.values())
    net.partition("a", "etcd")
    cut = time.monotonic()
    # its lease runs out (TTL after its last keepalive) and every watcher drops it
    gone = probe.change(timeout=TTL + 2, removed=a.address)["at"]
    before = probe.wait(lambda s: True, timeout=2, message="a status line")
    count = before["by_pid"][str(a.pid)]
    after = probe.wait(lambda s: s["calls"] > before["calls"] + 200, timeout=10,
                       message="200 calls without a")
    assert after["by_pid"][str(a.pid)] == count, "a took calls after it left etcd"
    assert registered(net, endpoint, nodes["b"].address)
    healed, back, took, final = heal_and_rejoin(net, probe, "a", a, count)
    print(f"\nnode cut off from etcd only: {final['calls']} calls by 8 callers, "
          f"{final['failed']} failed; lease gone {gone - cut:.2f} s after the cut (TTL {TTL}); "
          f"{after['calls'] - before['calls']} calls without it; listed again "
          f"{back - healed:.2f} s and answering {took - healed:.2f} s after the heal; "
          f"max latency {final['max']:.3f} s")
    assert final["failed"] == 0, final["errors"]


def test_a_client_cut_off_from_etcd_calls_on_from_its_cache_and_converges_after(test_network):
    net = test_network
    endpoint, nodes = world(net, "a", "b")
    net.add("d")
    probe = ClientProbe(net, "client", endpoint, timeout=5, callers=8, nodes=2)
    at_cut = in_traffic(probe, *nodes.values())["calls"]
    net.partition("client", "etcd")
    cut = time.monotonic()
    d = net.start_node("d", "tests.services", endpoint, ttl=TTL)   # joins during the cut
    wait_until(lambda: registered(net, endpoint, d.address), timeout=5, message="d in etcd")
    # a fixed window of fault, longer than a TTL: the calls must go on from the cache all along
    during = probe.wait(lambda s: s["at"] > cut + TTL + 1, timeout=TTL + 5, message="the window")
    assert d.address not in during["nodes"]
    before = probe.wait(lambda s: True, timeout=2, message="a status line")
    net.heal("client")
    healed = time.monotonic()
    # the watch stream was never broken, only silent: the event etcd sent during the cut arrives
    # with its next TCP retransmission, and the backoff between those (doubling) never exceeds
    # the time since the first send, so within one more cut length after the heal
    seen = probe.change(timeout=healed - cut + 1, added=d.address)["at"]
    probe.wait(lambda s: s["by_pid"].get(str(d.pid), 0) > 0, timeout=5, message="d taking calls")
    final = probe.stop()
    figures = dict(final, during=before["calls"] - at_cut, cut=healed - cut, seen=seen - healed)
    print("\nclient cut off from etcd only: {calls} calls by 8 callers, {failed} failed; {during} "
          "calls during the {cut:.1f} s cut; a node started during the cut listed {seen:.2f} s "
          "after the heal; max latency {max:.3f} s".format(**figures))
    assert final["failed"] == 0, final["errors"]


def test_a_blackholed_node_host_at_a_2s_timeout_costs_no_call(test_network):
    net = test_network
    endpoint, nodes = world(net, "a", "b", "c")
    c = nodes["c"]
    timeout = 2.0
    probe = ClientProbe(net, "client", endpoint, timeout=timeout, callers=16, nodes=3)
    in_traffic(probe, *nodes.values())
    net.blackhole("c")
    cut = time.monotonic()
    gone = probe.change(timeout=TTL + 2, removed=c.address)["at"]
    # a fixed fault window of 6 s, two TTLs: c loses its lease, then comes back on its own
    held = probe.wait(lambda s: s["at"] > cut + 6, timeout=10, message="the window")
    count = held["by_pid"][str(c.pid)]
    healed, back, took, final = heal_and_rejoin(net, probe, "c", c, count)
    print(f"\nnode host blackholed 6 s, 2 s timeout: {final['calls']} calls by 16 callers, "
          f"{final['failed']} failed; max latency {final['max']:.3f} s (deadline {timeout} s), "
          f"{final['over_deadline']} over deadline + 0.1 s, {final['slow']} over 0.25 s; "
          f"dropped from the view "
          f"{gone - cut:.2f} s after the cut; listed again {back - healed:.2f} s and answering "
          f"{took - healed:.2f} s after the heal")
    assert final["failed"] == 0, final["errors"]
    assert final["max"] <= timeout + 0.1
