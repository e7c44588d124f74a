"""etcd keep-alive connections (``framework.etcd.connections``), against a real etcd on real sockets.

Each test counts connections twice: with the client's own counters (``connections_opened``,
``requests``) and as the kernel sees them (ESTABLISHED sockets of this process to etcd's client
port, from ``/proc``), so a counter that lies cannot pass.
"""
import threading

import framework
from framework.etcd import Connections, Etcd
from framework.devetcd import make_certs
from framework.testing import ForkedChild, wait_until, wire


def established(endpoint: str) -> int:
    """ESTABLISHED TCP connections from this process to ``endpoint``'s port, per the kernel."""
    return wire.established(int(endpoint.rpartition(":")[2]))


def test_keepalives_puts_and_lists_in_sequence_share_one_connection(etcd):
    client = Etcd(etcd.endpoint)
    assert established(etcd.endpoint) == 0
    lease = client.grant(10)
    for i in range(50):
        assert client.keepalive(lease) > 0
        client.put(f"/conn/seq/{i:02d}", str(i), lease=lease)
        _, kvs = client.get_prefix("/conn/seq/")
        assert [kv.value for kv in kvs][-1] == str(i).encode() and len(kvs) == i + 1
        if i % 10 == 0:
            assert established(etcd.endpoint) == 1
    assert client.requests == 1 + 50 * 3
    assert client.connections_opened == 1
    assert established(etcd.endpoint) == 1 and client.idle_connections == 1
    client.close()
    wait_until(lambda: established(etcd.endpoint) == 0, timeout=5,
               message="close() to close the idle connection")
    assert client.get_prefix("/conn/seq/")[1], "a closed client connects again when used"
    assert client.connections_opened == 2


def test_without_keep_alive_every_request_opens_its_own_connection(etcd):
    client = framework.EtcdConfig(etcd.endpoint, keep_alive=False).client()
    lease = client.grant(10)
    for i in range(10):
        opened = client.connections_opened
        assert client.keepalive(lease) > 0
        assert client.connections_opened == opened + 1
        assert established(etcd.endpoint) == 0   # closed by the client as soon as it was read
    assert client.connections_opened == client.requests == 11
    assert client.idle_connections == 0


def test_many_threads_get_their_own_answers_and_idle_connections_stay_bounded(etcd):
    client = Etcd(etcd.endpoint)
    threads, rounds = 16, 50
    wrong: list = []
    idle_seen: list = []

    def work(t: int) -> None:
        try:
            for i in range(rounds):
                key, value = f"/conn/threads/{t:02d}/{i:02d}", f"thread {t} round {i}"
                client.put(key, value)
                _, kvs = client.get_prefix(key)
                got = [kv.value for kv in kvs if kv.key == key]
                if got != [value.encode()]:
                    wrong.append((key, got))
                idle_seen.append(client.idle_connections)
        except Exception as exc:   # reported below, with the thread it happened in
            wrong.append((t, repr(exc)))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not any(w.is_alive() for w in workers)
    assert wrong == []
    assert len(idle_seen) == threads * rounds
    assert max(idle_seen) <= Connections.max_idle
    assert client.requests == threads * rounds * 2
    assert 1 <= client.idle_connections <= Connections.max_idle
    assert established(etcd.endpoint) == client.idle_connections
    print(f"\n{threads} threads x {rounds} put+get: {client.connections_opened} connections for "
          f"{client.requests} requests, {client.idle_connections} idle at the end")
    # every key reads back as its own thread wrote it
    _, kvs = client.get_prefix("/conn/threads/")
    assert len(kvs) == threads * rounds
    assert all(kv.value.decode() == "thread {} round {}".format(
        *map(int, kv.key.split("/")[-2:])) for kv in kvs)


def test_a_connection_etcd_closed_by_restarting_is_replaced_without_an_error(etcd):
    client = Etcd(etcd.endpoint)
    client.put("/conn/restart", "before")
    assert client.idle_connections == 1
    etcd.restart()   # same port and data; every connection it had is gone
    sent = client.requests
    assert client.put("/conn/restart", "after") > 0
    # one fresh connection replaced the stale one; whether the stale one took the request before
    # failing depends on how etcd closed it (a FIN: sent, then no answer; a RST: broken pipe)
    assert client.connections_opened == 2
    assert client.requests in (sent + 1, sent + 2)
    assert client.get_prefix("/conn/restart")[1][0].value == b"after"
    assert established(etcd.endpoint) == 1


def test_tls_keepalives_cost_one_handshake_and_a_restart_one_more(processes, tmp_path):
    certs = make_certs(str(tmp_path / "pki"))
    etcd = processes.start_etcd(tls=certs)
    client = framework.EtcdConfig(etcd.client_url, ca=certs.ca, cert=certs.client_cert,
                                  key=certs.client_key).client()
    lease = client.grant(10)
    for _ in range(20):
        assert client.keepalive(lease) > 0
    assert client.connections_opened == 1 and client.requests == 21
    assert established(etcd.endpoint) == 1
    # over TLS a connection etcd dropped fails differently (an SSL EOF); it is replaced all the same
    etcd.restart()
    assert client.keepalive(lease) > 0
    assert client.connections_opened == 2 and established(etcd.endpoint) == 1


def _child_report(client: Etcd) -> dict:
    """In the forked child: what it inherited, then one request of its own."""
    report = {"idle_inherited": client.idle_connections, "opened_before": client.connections_opened}
    client.put("/conn/fork/child", "from the child")
    report.update(opened_after=client.connections_opened, idle_after=client.idle_connections)
    return report


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(etcd):
    client = Etcd(etcd.endpoint)
    client.put("/conn/fork/parent", "1")
    assert client.idle_connections == 1
    child = ForkedChild(lambda: _child_report(client))
    try:
        report = child.report(10)
        assert "error" not in report, report
        report = report["result"]
    finally:
        child.close()
    assert report == {"idle_inherited": 0, "opened_before": 1, "opened_after": 2,
                      "idle_after": 1}
    # the parent's pooled connection survived the child closing its copy
    sent = client.requests
    assert client.put("/conn/fork/parent", "2") > 0
    assert client.requests == sent + 1 and client.connections_opened == 1
    assert client.get_prefix("/conn/fork/child")[1][0].value == b"from the child"
    assert established(etcd.endpoint) == 1
