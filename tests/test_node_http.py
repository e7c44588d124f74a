"""Every node speaks HTTP on its RPC port: /healthz, /metrics and POST / JSON-RPC, next to msgpack.

Real node processes, real etcd, real sockets; metrics are read back as Prometheus text.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

import framework
from framework import protocol
from framework.testing import (Load, RawConnection, http_request, post_json, sample,
                               scrape_metrics, wait_until)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_healthz_and_metrics_after_real_calls(serve_node, make_client):
    node = serve_node("tests.services")
    client = make_client()
    for word in ("a", "b", "c"):
        assert client.HelloService.Hello(word) == "hello:" + word
    with pytest.raises(framework.RemoteError):
        client.HelloService.Fail("boom")
    with pytest.raises(framework.InvalidParams):
        client.HelloService.Pid(1, 2)

    status, headers, body = http_request(node.address, "GET", "/healthz")
    health = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert health["status"] == "serving" and "HelloService" in health["services"]
    assert health["registered"] is True and health["address"] == node.address

    m = scrape_metrics(node.address)
    base = dict(service="HelloService")
    assert sample(m, "framework_calls_total", method="Hello", outcome="ok", **base) == 3
    assert sample(m, "framework_calls_total", method="Fail", outcome="error", **base) == 1
    assert sample(m, "framework_calls_total", method="Pid", outcome="invalid_params", **base) == 1
    assert sample(m, "framework_call_duration_seconds_count", method="Hello", **base) == 3
    assert 0 < sample(m, "framework_call_duration_seconds_sum", method="Hello", **base) < 1
    assert sample(m, "framework_calls_in_flight") == 0
    assert sample(m, "framework_registered") == 1
    assert sample(m, "framework_registration_grants_total") == 1
    assert sample(m, "framework_draining") == 0
    # HEAD works where GET does; other methods and paths are refused in JSON, never a 500
    assert http_request(node.address, "HEAD", "/healthz")[0] == 200
    assert http_request(node.address, "GET", "/")[0] == 405
    assert http_request(node.address, "GET", "/nope")[0] == 404


def test_in_flight_gauge_counts_running_calls(serve_node, make_client):
    node = serve_node("tests.services")
    client = make_client(timeout=20)
    load = Load(lambda: client.HelloService.Sleep(2.0), callers=3, per_caller=1).start()
    wait_until(lambda: sample(scrape_metrics(node.address), "framework_calls_in_flight") == 3,
               timeout=10, interval=0.05, message="3 calls in flight")
    load.join()
    assert len(load.ok) == 3
    assert sample(scrape_metrics(node.address), "framework_calls_in_flight") == 0


def test_post_json_rpc_to_a_node(serve_node, make_client):
    node = serve_node("tests.services")
    addr = node.address
    assert post_json(addr, {"jsonrpc": "2.0", "id": 1, "method": "HelloService.Hello",
                            "params": ["curl"]}) == (
        200, {"jsonrpc": "2.0", "id": 1, "result": "hello:curl"})
    assert post_json(addr, {"jsonrpc": "2.0", "id": "n", "method": "HelloService.Echo",
                            "params": {"a": 1}}) == (
        200, {"jsonrpc": "2.0", "id": "n", "result": {"args": [], "kwargs": {"a": 1}}})
    status, answer = post_json(addr, {"jsonrpc": "2.0", "id": 2, "method": "HelloService.Fail",
                                      "params": ["bad"]})
    assert status == 200 and answer["error"] == {
        "code": -32000, "message": "bad", "data": {"type": "ValueError", "message": "bad"}}
    status, answer = post_json(addr, {"jsonrpc": "2.0", "id": 3, "method": "HelloService._private"})
    assert status == 404 and answer["error"]["code"] == -32601
    assert post_json(addr, b'{"jsonrpc"')[1]["error"]["code"] == -32700
    assert post_json(addr, {"jsonrpc": "2.0", "method": "HelloService.Hello",
                            "params": ["n"]}) == (204, None)
    status, answer = post_json(addr, [{"jsonrpc": "2.0", "id": 1, "method": "HelloService.Hello",
                                       "params": ["b"]}, 5,
                                      {"jsonrpc": "2.0", "method": "HelloService.Hello",
                                       "params": ["x"]}])
    assert status == 200 and answer[0]["result"] == "hello:b" and answer[1]["error"]["code"] == -32600
    assert len(answer) == 2
    status, answer = post_json(addr, b"x" * (2 * 1024 * 1024))
    assert status == 413
    # the msgpack protocol on the same port is untouched by all of that
    assert make_client().HelloService.Hello("mp") == "hello:mp"
    m = scrape_metrics(addr)
    assert sample(m, "framework_calls_total", service="HelloService", method="Hello",
                  outcome="ok") == 5   # 1 call + 1 notification, 2 in the batch, 1 msgpack


def test_sniffing_waits_for_split_first_bytes_and_leaves_garbage_to_msgpack(serve_node, make_client):
    node = serve_node("tests.services")
    with RawConnection(node.address, timeout=10) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.send(b"GE")
        time.sleep(0.05)   # pacing, not a condition: the two writes must arrive as two segments
        conn.send(b"T /healthz HTTP/1.0\r\n\r\n")
        reply = conn.read_all()
    assert reply.startswith(b"HTTP/1.1 200") and b'"status":"serving"' in reply
    # bytes that are neither HTTP nor a sane frame: the msgpack side refuses them, the node lives on
    with RawConnection(node.address, timeout=10) as garbage:
        garbage.send(b"\xff\xff\xff\xffnot a frame")
        assert garbage.recv() != b"HTTP"  # an error frame, or a close
    assert http_request(node.address, "GET", "/healthz")[0] == 200
    assert make_client().HelloService.Hello("still") == "hello:still"


def test_healthz_is_503_while_draining_then_the_node_exits_0(serve_node, make_client):
    node = serve_node("tests.services", extra_args=["--grace", "3"])
    client = make_client()
    assert client.HelloService.Hello("x") == "hello:x"
    node.terminate()
    wait_until(lambda: http_request(node.address, "GET", "/healthz")[0] == 503, timeout=5, interval=0.02,
               message="/healthz 503 during the grace window")
    status, _, body = http_request(node.address, "GET", "/healthz")
    assert json.loads(body)["status"] == "draining"
    assert sample(scrape_metrics(node.address), "framework_draining") == 1
    # deregistered first: callers stop choosing it while it still answers
    wait_until(lambda: client.nodes("HelloService") == [], timeout=5, message="deregistered")
    assert node.wait(timeout=30) == 0


def test_lease_regrant_shows_in_metrics(serve_node, make_client):
    node = serve_node("tests.services", ttl=2)
    client = make_client()
    wait_until(lambda: client.nodes("HelloService") == [node.address], message="registered")
    node.freeze()   # SIGSTOP past the TTL: the lease expires, the key goes away
    try:
        wait_until(lambda: client.nodes("HelloService") == [], timeout=15, interval=0.05,
                   message="lease expiry while frozen")
    finally:
        node.thaw()
    wait_until(lambda: sample(scrape_metrics(node.address),
                              "framework_registration_grants_total") == 2, timeout=15, interval=0.05, message="a second lease granted")
    m = scrape_metrics(node.address)
    assert sample(m, "framework_registered") == 1
    wait_until(lambda: client.nodes("HelloService") == [node.address], timeout=10,
               message="registered again")


def test_in_process_stop_closes_http_keep_alive_connections():
    # python tests/stop_probe.py: Server in a patched process, one keep-alive POST, then stop()
    done = subprocess.run([sys.executable, "tests/stop_probe.py"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["answer"] == {"jsonrpc": "2.0", "id": 1, "result": "hello:x"}
    assert out["keep_alive"] is True
    print(f"\nkeep-alive HTTP connection closed {out['closed_after']:.3f}s into stop()")
    assert out["closed_after"] is not None and out["closed_after"] < 5


def test_a_lone_call_that_blocks_does_not_stop_its_connection(serve_node):
    # A lone request runs in the connection's reader greenlet (no hand-off to a worker). When it
    # blocks, another greenlet must take over reading: pings and new calls on the same connection
    # are answered while it sleeps.
    node = serve_node("tests.services")
    with RawConnection(node.address, timeout=10) as conn:
        conn.send(protocol.request(1, "HelloService.Sleep", [1.5]))
        wait_until(lambda: sample(scrape_metrics(node.address), "framework_calls_in_flight") == 1,
                   timeout=5, interval=0.02, message="the Sleep call running")
        t0 = time.monotonic()
        conn.send({"jsonrpc": "2.0", "id": 0, "method": protocol.PING},
                  protocol.request(2, "HelloService.Hello", ["x"]))
        answers = {}
        while len(answers) < 3:
            frames, closed = conn.read_frames(timeout=10, want=1)
            assert frames, f"connection {'closed' if closed else 'silent'} after {sorted(answers)}"
            for msg in frames:
                answers[msg["id"]] = (msg.get("result"), time.monotonic() - t0)
    print(f"\nwhile a lone call slept: pong after {answers[0][1] * 1000:.1f} ms, another call "
          f"after {answers[2][1] * 1000:.1f} ms; the sleeper after {answers[1][1]:.2f} s")
    assert answers[0][0] == "pong" and answers[2][0] == "hello:x"
    assert answers[1][0] == node.pid
    # both answered while the sleeper still slept, which answered last
    assert answers[0][1] < 1.0 and answers[2][1] < 1.0 and answers[1][1] > answers[2][1]
