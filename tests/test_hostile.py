"""Hostile and broken input on a real node's port: garbage, broken frames, huge lengths, hostile
msgpack, private method names, floods of idle and half-open connections, slow senders and readers.

The node must stay up, keep serving a good client, close what it must, and keep its memory
bounded (RSS read from /proc/<pid>/status). The node runs with small limits so that the test is
quick: ``--frame-timeout 2 --max-frame 65536 --max-conn-in-flight 4 --max-concurrency 8``.
"""
import os
import random
import socket
import threading
import time

import msgpack
import pytest

from framework import Client, protocol
from framework.testing import ProcessGroup, RawConnection, frame, frame_header, wait_until

FRAME_TIMEOUT = 2.0
MAX_FRAME = 65536
LIMITS = ["--frame-timeout", str(FRAME_TIMEOUT), "--max-frame", str(MAX_FRAME),
          "--max-conn-in-flight", "4", "--max-concurrency", "8"]


@pytest.fixture(scope="module")
def world():
    """One etcd, one node and one good client for the whole module: every test here checks that
    the node comes out of its abuse still serving and bounded, so the next test starts from a
    node that has already been abused once - and it saves a node's start per test."""
    group = ProcessGroup()
    try:
        etcd = group.start_etcd()
        node = group.start_node("tests.services", etcd.endpoint, ttl=3, extra_args=LIMITS)
        yield node, group.add(Client(etcd=etcd.endpoint, timeout=5))
    finally:
        group.close()


@pytest.fixture
def node(world):
    node = world[0]
    assert node.alive, "an earlier test of this module took the node down"
    return node


@pytest.fixture
def good(world):
    return world[1]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def still_serving(good, node) -> None:
    assert node.alive, node.log()
    assert good.HelloService.Hello("ok") == "hello:ok"


NESTED = [[[[[[[[[[1]]]]]]]]]]


def test_garbage_broken_frames_and_hostile_msgpack_never_take_the_node_down(node, good):
    still_serving(good, node)
    rng = random.Random(4)
    base = rss_kb(node.pid)
    cases = {
        # name: (bytes, expected error code or None when the node just closes)
        "random bytes": (bytes(rng.getrandbits(8) for _ in range(65536)), None),
        "huge declared length": (frame_header(0xffffffff) + b"x" * 100, -32600),
        "just over max_frame": (frame_header(MAX_FRAME + 1), -32600),
        "zero length": (frame_header(0), -32600),
        "not msgpack": (frame(b"\xc1\xc1\xc1"), -32700),
        "ext type": (protocol.pack({"x": msgpack.ExtType(5, b"boom")}), -32700),
        "timestamp ext": (protocol.pack(protocol.request(1, "HelloService.Echo",
                                                [msgpack.Timestamp(1, 0)])), -32700),
        "array claims 4G items": (frame(b"\x81\xa1a\xdd\xff\xff\xff\xff"), -32700),
        "str claims 4G bytes": (frame(b"\x81\xa1a\xdb\xff\xff\xff\xff"), -32700),
        "nested 100k deep": (frame(b"\x91" * 60000 + b"\x01"), -32700),
        "invalid utf-8": (frame(b"\x81\xa2\xff\xfe\x01"), -32700),
        "list as map key": (frame(b"\x81\x91\x01\x01"), -32700),
    }
    for name, (payload, code) in cases.items():
        with RawConnection(node.address) as conn:
            conn.send(payload)
            frames, closed = conn.read_frames(timeout=FRAME_TIMEOUT + 2)
        assert closed, f"{name}: the node must close the connection"
        if code is not None:
            assert [f["error"]["code"] for f in frames] == [code], (name, frames)
        still_serving(good, node)

    # valid msgpack that is no JSON-RPC request: answered, and the connection stays usable
    with RawConnection(node.address) as conn:
        for i, bad in enumerate([[1, 2], 7, {"jsonrpc": "1.0", "id": 1, "method": "x"},
                                 {"jsonrpc": "2.0", "id": [1], "method": "x"},
                                 {"jsonrpc": "2.0", "id": 2, "method": 5},
                                 {"jsonrpc": "2.0", "id": 3, "method": "HelloService.Hello",
                                  "params": "x"},
                                 protocol.request(4, "HelloService.Hello", [1, 2, 3]),
                                 protocol.request(5, "HelloService.Echo", [NESTED]),
                                 {"jsonrpc": "2.0", "id": 6, "method": "HelloService.Hello",
                                  "params": {1: "x"}}]):
            conn.send(bad)
        conn.send(protocol.request(99, "HelloService.Hello", ["after"]))
        frames, closed = conn.read_frames(want=10)
    assert not closed
    by_id = {f.get("id"): f for f in frames}
    assert by_id[99]["result"] == "hello:after"
    assert [by_id[i]["error"]["code"] for i in (1, 2, 3)] == [-32600] * 3
    assert by_id[4]["error"]["code"] == -32602 and by_id[6]["error"]["code"] == -32602
    assert by_id[5]["result"]["args"] == [NESTED]
    assert sum(1 for f in frames if f.get("id") is None and f["error"]["code"] == -32600) == 3

    # a 900-deep argument decodes (msgpack's decoder stops at 1024) and its echo is answered
    # (encoded, or an encoding error), and the connection stays usable
    template = msgpack.packb(protocol.request(1, "HelloService.Echo", [0]))
    assert template.endswith(b"\xa6params\x91\x00")
    body = template[:-1] + b"\x91" * 900 + b"\x01"
    with RawConnection(node.address) as conn:
        conn.send(frame(body), protocol.request(2, "HelloService.Hello", ["deep"]))
        frames, closed = conn.read_frames(want=2)
    by_id = {f["id"]: f for f in frames}
    assert "result" in by_id[1] or by_id[1]["error"]["code"] == -32603
    assert by_id[2]["result"] == "hello:deep" and not closed
    still_serving(good, node)
    grown = rss_kb(node.pid) - base
    print(f"\nhostile payloads: {len(cases)} kinds + 9 invalid requests; node RSS grew {grown} kB")
    assert grown < 30 * 1024


def test_hostile_http_on_the_same_port(node, good):
    """Bytes that start like HTTP go to the node's HTTP handler; it must not fall over either."""
    base = rss_kb(node.pid)
    payloads = [b"GET /" + b"a" * 200000 + b" HTTP/1.1\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 20000 + b"\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nx",
                b"GET",     # a prefix of a method, then silence
                b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(5000)]
    answers, conns = [], []
    for payload in payloads:   # all at once: two of them wait for frame_timeout
        conn = RawConnection(node.address)
        conns.append(conn)
        try:
            conn.send(payload)
        except OSError:
            pass        # the node may close while we still send: that is a fine answer
    for conn in conns:
        try:
            answers.append(conn.recv(200, timeout=FRAME_TIMEOUT + 3).split(b"\r\n")[0])
        except OSError as exc:
            answers.append(repr(exc).encode())
        conn.close()
        still_serving(good, node)
    print(f"\nhostile HTTP: first lines {answers}; node RSS grew {rss_kb(node.pid) - base} kB")
    assert rss_kb(node.pid) - base < 30 * 1024


def test_method_names_never_reach_private_or_dunder_attributes(node, good):
    names = ["_private", "HelloService._private", "HelloService.__class__",
             "HelloService.__init__", "HelloService.__dict__", "HelloService.Hello.__globals__",
             "HelloService.Hello.__code__", "HelloService.client", "HelloService.__rpc_spec__",
             "HelloService.__service_name__", "HelloService.__reduce__", "__import__",
             "HelloService.Hello.__self__", "HelloService..Hello", "HelloService.Hello ",
             "helloservice.hello", "Ledger.Charge.__globals__", "GreeterService.Greet.__func__",
             "HelloService.__getattribute__", "HelloService.__subclasshook__", ""]
    with RawConnection(node.address) as conn:
        conn.send(*(protocol.request(i, name, ["x"]) for i, name in enumerate(names)))
        frames, closed = conn.read_frames(want=len(names))
    assert not closed and len(frames) == len(names)
    assert {f["error"]["code"] for f in frames} == {-32601}, frames
    assert all("result" not in f for f in frames)
    still_serving(good, node)


def test_flood_of_idle_and_half_open_connections(node, good):
    still_serving(good, node)
    base_rss, base_fds = rss_kb(node.pid), open_fds(node.pid)
    conns = []
    started = time.monotonic()
    for i in range(600):
        conn = RawConnection(node.address)
        if i % 3 == 1:        # half-open: a header and part of the body, then silence
            conn.send(frame_header(MAX_FRAME) + b"\x00" * (MAX_FRAME - 100))
        elif i % 3 == 2:      # half-closed after a partial frame
            conn.send(frame_header(50) + b"\x80" * 10)
            conn.shutdown_write()
        conns.append(conn)    # i % 3 == 0: idle, not a byte sent
    flooded = time.monotonic() - started
    peak_rss = rss_kb(node.pid)
    # a good client is served while the flood is in place
    t0 = time.monotonic()
    for i in range(50):
        assert good.HelloService.Hello(str(i)) == f"hello:{i}"
    latency_ms = (time.monotonic() - t0) / 50 * 1000
    # every flood connection is closed by the node once frame_timeout passes
    wait_until(lambda: open_fds(node.pid) <= base_fds + 5, timeout=FRAME_TIMEOUT + 10,
               message="the node to close idle and half-open connections")
    cleared = time.monotonic() - started
    for conn in conns:
        conn.close()
    still_serving(good, node)
    growth_mb = (peak_rss - base_rss) / 1024
    print(f"\nflood: 600 connections (200 idle, 200 with {MAX_FRAME - 100}-byte partial frames, "
          f"200 half-closed) opened in {flooded:.2f}s; node RSS +{growth_mb:.1f} MB at peak; "
          f"good calls {latency_ms:.2f} ms each during the flood; all closed by the node "
          f"{cleared:.1f}s after the flood began (frame_timeout {FRAME_TIMEOUT}s)")
    # bound: 200 partial frames x max_frame, twice over for allocator slack, plus 30 MB
    assert peak_rss - base_rss < (200 * MAX_FRAME * 2) // 1024 + 30 * 1024


def test_slow_sender_is_served_until_frame_timeout_then_cut(node, good):
    payload = protocol.pack(protocol.request(1, "HelloService.Hello", ["slow"]))
    # slow but within frame_timeout: answered
    with RawConnection(node.address) as conn:
        for byte in payload:
            conn.send(bytes([byte]))
            time.sleep(0.01)   # the sender's pace (the scenario), not a wait for a condition
        frames, _ = conn.read_frames(want=1)
    assert frames[0]["result"] == "hello:slow"

    # slower than frame_timeout for one frame: the node cuts it, meanwhile serves others
    stop = threading.Event()
    cut = []

    def trickle():
        with RawConnection(node.address) as conn:
            began = time.monotonic()
            for byte in payload:
                if stop.is_set():
                    return
                try:
                    conn.send(bytes([byte]))
                    time.sleep(0.25)
                    if conn.recv(1, timeout=0.001) == b"":
                        cut.append(time.monotonic() - began)
                        return
                except socket.timeout:
                    continue
                except OSError:
                    cut.append(time.monotonic() - began)
                    return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    calls = 0
    deadline = time.monotonic() + FRAME_TIMEOUT + 5   # bounded by time: calls got fast
    while t.is_alive() and time.monotonic() < deadline:
        assert good.HelloService.Hello("x") == "hello:x"
        calls += 1
    stop.set()
    t.join(5)
    print(f"\nslow sender: cut after {cut[0]:.2f}s (frame_timeout {FRAME_TIMEOUT}s); "
          f"{calls} good calls meanwhile")
    assert cut and FRAME_TIMEOUT - 0.5 <= cut[0] <= FRAME_TIMEOUT + 2
    still_serving(good, node)


def test_slow_reader_cannot_make_the_node_buffer_without_bound(node, good):
    base = rss_kb(node.pid)
    blob = "x" * 60000
    one = protocol.pack(protocol.request(1, "HelloService.Echo", [blob]))
    conn = RawConnection(node.address, timeout=0.5, rcvbuf=4096)   # a small window
    sent = 0
    try:   # pipeline requests and never read: the node must stop reading us at some point
        while sent < 3000:
            conn.send(one)
            sent += 1
    except socket.timeout:
        pass
    peak = rss_kb(node.pid)
    still_serving(good, node)
    conn.close()
    grown_mb = (peak - base) / 1024
    print(f"\nslow reader: the node stopped reading after {sent} x 60 kB requests "
          f"({sent * 60 / 1024:.1f} MB offered, 180 MB attempted); node RSS +{grown_mb:.1f} MB")
    assert sent < 3000, "backpressure must stop the sender"
    assert grown_mb < 60


def test_per_connection_and_per_node_in_flight_limits_give_backpressure(node, good):
    # one connection pipelines 16 calls of 0.3 s: at most 4 run at once on it -> >= 4 waves
    with RawConnection(node.address) as conn:
        t0 = time.monotonic()
        conn.send(*(protocol.request(i, "HelloService.Sleep", [0.3]) for i in range(16)))
        # meanwhile the node still has room for others (8 - 4 slots)
        t1 = time.monotonic()
        assert good.HelloService.Hello("room") == "hello:room"
        other_ms = (time.monotonic() - t1) * 1000
        frames, _ = conn.read_frames(timeout=10, want=16)
        one_conn = time.monotonic() - t0
    assert len(frames) == 16 and all("result" in f for f in frames)
    assert one_conn >= 4 * 0.3 - 0.05
    assert other_ms < 250

    # three connections x 8 calls: the node runs at most 8 at once -> >= 3 waves
    conns = [RawConnection(node.address) for _ in range(3)]
    t0 = time.monotonic()
    for conn in conns:
        conn.send(*(protocol.request(i, "HelloService.Sleep", [0.3]) for i in range(8)))
    answered = sum(len(conn.read_frames(timeout=10, want=8)[0]) for conn in conns)
    all_conns = time.monotonic() - t0
    for conn in conns:
        conn.close()
    print(f"\nbackpressure: 16 x 0.3 s calls on one connection took {one_conn:.2f}s (cap 4); "
          f"another client's call meanwhile {other_ms:.1f} ms; 24 calls on 3 connections "
          f"took {all_conns:.2f}s (node cap 8)")
    assert answered == 24
    assert all_conns >= 3 * 0.3 - 0.05


def test_unknown_method_names_cost_a_client_no_memory(node, good):
    """A gateway forwards whatever method name its callers send to a known service: a client must
    keep nothing per name that no node has (it caches routes for real methods only)."""
    import tracemalloc
    import framework
    for i in range(200):   # warm-up: the first calls allocate what every call reuses
        with pytest.raises(framework.MethodNotFound):
            good.call(f"HelloService.warm{i}", [])
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(5000):
        with pytest.raises(framework.MethodNotFound):
            good.call(f"HelloService.m{i:05d}x{random.getrandbits(32)}", [])
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    print(f"\n5000 unknown method names: the client grew by {grown / 1024:.1f} kB")
    assert grown < 256 * 1024, grown
    still_serving(good, node)
