"""The HTTP gateway: every example of section 7 of the JSON-RPC 2.0 specification, each limit, and a
backend that is down - against a real ``python -m framework gateway`` in front of real nodes.

Spec method names are served by ``tests.spec_services.Spec``, so ``"subtract"`` is ``"Spec.subtract"``.
"""
import http.client
import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from framework.testing import ProcessGroup, RawConnection, sample, scrape_metrics, wait_until


@pytest.fixture(scope="module")
def world():
    """One etcd, a Spec node, a HelloService node and a gateway in front, shared by the module."""
    group = ProcessGroup()
    try:
        etcd = group.start_etcd()
        spec = group.start_node("tests.spec_services", etcd.endpoint, ttl=3)
        hello = group.start_node("tests.services", etcd.endpoint, ttl=3)
        gateway = group.start_gateway(etcd.endpoint, "--max-body", "65536", "--max-batch", "20",
                                      "--max-depth", "8")
        yield {"etcd": etcd, "spec": spec, "hello": hello, "gateway": gateway}
    finally:
        group.close()


@pytest.fixture
def gw(world):
    return world["gateway"]


def call(method, params=None, id=1):
    obj = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        obj["params"] = params
    return obj


# ---- section 7, one example each -----------------------------------------------------------------

def test_positional_parameters(gw):
    assert gw.post(call("Spec.subtract", [42, 23], 1)) == (
        200, {"jsonrpc": "2.0", "result": 19, "id": 1})
    assert gw.post(call("Spec.subtract", [23, 42], 2)) == (
        200, {"jsonrpc": "2.0", "result": -19, "id": 2})


def test_named_parameters(gw):
    assert gw.post(call("Spec.subtract", {"subtrahend": 23, "minuend": 42}, 3)) == (
        200, {"jsonrpc": "2.0", "result": 19, "id": 3})
    assert gw.post(call("Spec.subtract", {"minuend": 42, "subtrahend": 23}, 4)) == (
        200, {"jsonrpc": "2.0", "result": 19, "id": 4})


def test_notifications_get_no_body_but_run(gw):
    status, headers, body = gw.request(
        "POST", "/", json.dumps({"jsonrpc": "2.0", "method": "Spec.update", "params": [1, 2, 3, 4, 5]}))
    assert (status, body) == (204, b"")
    # a notification of a method that does not exist is not answered either
    status, _, body = gw.request("POST", "/", json.dumps({"jsonrpc": "2.0", "method": "Spec.foobar"}))
    assert (status, body) == (204, b"")
    _, answer = gw.post(call("Spec.notifications", [], 9))
    assert ["update", [1, 2, 3, 4, 5]] in answer["result"]


def test_non_existent_method(gw):
    for method in ("Spec.foobar", "foobar", "foo.get"):
        status, answer = gw.post({"jsonrpc": "2.0", "method": method, "id": "1"})
        assert status == 404, method
        assert answer["id"] == "1" and answer["error"]["code"] == -32601, answer


def test_invalid_json(gw):
    status, answer = gw.post(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert status == 400
    assert answer["id"] is None and answer["error"]["code"] == -32700


def test_invalid_request_object(gw):
    status, answer = gw.post({"jsonrpc": "2.0", "method": 1, "params": "bar"})
    assert status == 400
    assert answer["id"] is None and answer["error"]["code"] == -32600


def test_batch_invalid_json(gw):
    status, answer = gw.post(b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
                             b'{"jsonrpc": "2.0", "method"]')
    assert status == 400
    assert isinstance(answer, dict) and answer["error"]["code"] == -32700 and answer["id"] is None


def test_empty_array_is_one_invalid_request(gw):
    status, answer = gw.post(b"[]")
    assert status == 400
    assert isinstance(answer, dict) and answer["error"]["code"] == -32600 and answer["id"] is None


def test_invalid_batch_of_one_and_of_three(gw):
    status, answer = gw.post(b"[1]")
    assert status == 200
    assert [(a["id"], a["error"]["code"]) for a in answer] == [(None, -32600)]
    status, answer = gw.post(b"[1,2,3]")
    assert [(a["id"], a["error"]["code"]) for a in answer] == [(None, -32600)] * 3


def test_mixed_batch(gw):
    batch = [
        {"jsonrpc": "2.0", "method": "Spec.sum", "params": [1, 2, 4], "id": "1"},
        {"jsonrpc": "2.0", "method": "Spec.notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "Spec.subtract", "params": [42, 23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "Spec.get_data", "id": "9"},
    ]
    status, answer = gw.post(batch)
    assert status == 200
    by_id = {}
    for item in answer:
        by_id.setdefault(item["id"], []).append(item)
    assert len(answer) == 5  # the notification is left out
    assert by_id["1"] == [{"jsonrpc": "2.0", "result": 7, "id": "1"}]
    assert by_id["2"] == [{"jsonrpc": "2.0", "result": 19, "id": "2"}]
    assert by_id["5"][0]["error"]["code"] == -32601
    assert by_id["9"] == [{"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}]
    assert by_id[None][0]["error"]["code"] == -32600


def test_batch_of_notifications_gets_no_body(gw):
    status, _, body = gw.request("POST", "/", json.dumps([
        {"jsonrpc": "2.0", "method": "Spec.notify_sum", "params": [1, 2, 4]},
        {"jsonrpc": "2.0", "method": "Spec.notify_hello", "params": [7]}]))
    assert (status, body) == (204, b"")
    _, answer = gw.post(call("Spec.notifications", [], 1))
    assert ["notify_sum", [1, 2, 4]] in answer["result"]


# ---- ids, params, handler errors -----------------------------------------------------------------

@pytest.mark.parametrize("rid", ["abc", "", 0, 7, -3, 2 ** 53 + 1, 1.5, None, "ünï"])
def test_id_is_echoed_exactly(gw, rid):
    status, _, body = gw.request("POST", "/", json.dumps(call("Spec.echo_id", ["v"], rid)))
    answer = json.loads(body)
    assert status == 200 and answer["result"] == "v"
    assert answer["id"] == rid and type(answer["id"]) is type(rid)


def test_invalid_params(gw):
    status, answer = gw.post(call("Spec.subtract", [1, 2, 3], 5))
    assert status == 400 and answer["id"] == 5 and answer["error"]["code"] == -32602


def test_handler_exception_is_a_server_error_with_type_and_message(gw):
    status, answer = gw.post(call("HelloService.Fail", ["boom"], 11))
    assert status == 200
    assert answer["id"] == 11
    error = answer["error"]
    assert -32099 <= error["code"] <= -32000
    assert error["message"] == "boom"
    assert error["data"] == {"type": "ValueError", "message": "boom"}


def test_results_json_cannot_carry_are_errors_not_500(gw):
    for method in ("Spec.binary", "Spec.nan"):
        status, _, body = gw.request("POST", "/", json.dumps(call(method, [], 1)))
        answer = json.loads(body)
        assert status == 502 and answer["error"]["code"] == -32603, (method, answer)


# ---- limits ---------------------------------------------------------------------------------------

def test_body_over_limit_is_413_without_reading_it(gw):
    status, headers, body = gw.request("POST", "/", b" " * 70000)
    assert status == 413 and json.loads(body)["error"]["code"] == -32600
    # a declared 64 MB body is refused from its headers: the answer comes back before any body
    with RawConnection(gw.address, timeout=10) as conn:
        conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n{")
        reply = conn.recv()
    assert reply.startswith(b"HTTP/1.1 413")


def test_chunked_body_over_limit_stops_reading(gw):
    sent = 0
    with RawConnection(gw.address, timeout=10) as conn:
        conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"4000\r\n" + b"[" * 0x4000 + b"\r\n"
        reply = b""
        conn.sock.settimeout(0.05)   # the send as well as the read: a full window is no failure
        while not reply and sent < 64 * 1024 * 1024:
            try:
                conn.sock.sendall(chunk)
                sent += 0x4000
                reply = conn.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
        conn.sock.settimeout(10)
        reply = reply or conn.recv()
    assert reply.startswith(b"HTTP/1.1 413")
    assert sent < 4 * 1024 * 1024   # stopped near the 64 KiB limit, not after the whole stream


def test_batch_over_limit(gw):
    status, answer = gw.post([call("Spec.sum", [1], i) for i in range(21)])
    assert status == 400 and isinstance(answer, dict) and answer["error"]["code"] == -32600
    status, answer = gw.post([call("Spec.sum", [i], i) for i in range(20)])
    assert status == 200 and sorted(a["result"] for a in answer) == list(range(20))


def test_nesting_over_limit(gw):
    deep = {"jsonrpc": "2.0", "method": "Spec.echo_id", "id": 1, "params": [[[[[[[[1]]]]]]]]}
    status, answer = gw.post(deep)
    assert status == 400 and answer["error"]["code"] == -32700
    ok = {"jsonrpc": "2.0", "method": "Spec.echo_id", "id": 1, "params": [[[[[1]]]]]}
    assert gw.post(ok) == (200, {"jsonrpc": "2.0", "id": 1, "result": [[[[1]]]]})
    status, answer = gw.post(b"[" * 100000 + b"]" * 100000)  # would blow a recursive parser
    assert status in (400, 413) and answer["error"]["code"] in (-32700, -32600)


def test_invalid_utf8_and_non_json_numbers_are_parse_errors(gw):
    for body in (b'{"jsonrpc": "2.0", "method": "Spec.echo_id", "params": ["\xff\xfe"], "id": 1}',
                 b'{"jsonrpc": "2.0", "method": "Spec.echo_id", "params": [NaN], "id": 1}',
                 b"\xef\xbb\xbf", b""):
        status, answer = gw.post(body)
        assert status == 400 and answer == {"jsonrpc": "2.0", "id": None, "error": {
            "code": -32700, "message": answer["error"]["message"]}}, body


def test_hostile_requests_never_get_a_500(gw):
    bodies = [b"null", b"1", b'"x"', b"{}", b'{"jsonrpc":"1.0","method":"Spec.sum","id":1}',
              b'{"jsonrpc":"2.0","method":"Spec.sum","params":1,"id":1}',
              b'{"jsonrpc":"2.0","method":"Spec.sum","id":{"a":1}}',
              b'{"jsonrpc":"2.0","method":"Spec.sum","id":true}',
              b'{"jsonrpc":"2.0","method":"Spec._private","id":1}',
              b'{"jsonrpc":"2.0","method":"Spec.__init__","id":1}',
              b'{"jsonrpc":"2.0","method":"' + b"A" * 5000 + b'.x","id":1}',
              b'{"jsonrpc":"2.0","method":"Spec.sum","params":["a",1],"id":1}']
    for body in bodies:
        status, headers, data = gw.request("POST", "/", body)
        assert status != 500 and status < 600, body
        answer = json.loads(data)
        assert "error" in answer and "Traceback" not in data.decode(), body
    assert gw.request("GET", "/")[0] == 405
    assert gw.request("GET", "/nope")[0] == 404


# ---- health and metrics ---------------------------------------------------------------------------

def test_healthz_and_metrics(gw):
    gw.post(call("Spec.subtract", [2, 1], 1))
    gw.post(call("Spec.fail", ["on purpose"], 1))
    gw.post(call("Nope.nothing", [], 1))
    status, headers, body = gw.request("GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "serving"
    m = scrape_metrics(gw.address)   # asserts a 200 with Prometheus text
    ok = sample(m, "framework_gateway_calls_total", method="subtract", outcome="ok",
                service="Spec")
    assert ok is not None and ok >= 1
    # the gateway's client counts its calls too, failed ones by their outcome
    assert sample(m, "framework_client_calls_total", method="subtract", outcome="ok",
                  service="Spec") >= 1
    assert sample(m, "framework_client_calls_total", method="fail", outcome="error",
                  service="Spec") >= 1
    # no labels from bad names: they are counted as one unknown service
    assert "(unknown)" in {dict(labels).get("service") for _, labels in m}
    assert not any("Nope" in value for _, labels in m for _, value in labels)
    assert sample(m, "framework_discovery_nodes", service="Spec") == 1.0
    assert sample(m, "framework_gateway_http_responses_total", status="200") >= 2
    assert sample(m, "framework_gateway_http_responses_total", status="404") >= 1
    assert any(name == "framework_gateway_call_duration_seconds_bucket" for name, _ in m)


# ---- a backend that is down -----------------------------------------------------------------------

def test_backend_down_is_503_with_a_json_rpc_error(serve_node, serve_gateway):
    node = serve_node("tests.services", ttl=2)
    gw = serve_gateway("--timeout", "2")
    assert gw.post(call("HelloService.Hello", ["x"], 1)) == (
        200, {"jsonrpc": "2.0", "id": 1, "result": "hello:x"})
    node.kill()   # SIGKILL: still registered until its lease expires
    started = time.monotonic()
    status, answer = gw.post(call("HelloService.Hello", ["x"], 2))
    assert status == 503 and answer["error"]["code"] == -32010 and answer["id"] == 2
    assert time.monotonic() - started < 5
    # once the lease expired there is no node at all: same answer, at once
    wait_until(lambda: gw.post(call("HelloService.Hello", ["x"], 3))[1]["error"]["message"]
               .startswith("no live node"), timeout=15, interval=0.2, message="lease expiry")
    started = time.monotonic()
    status, answer = gw.post(call("HelloService.Hello", ["x"], 4))
    assert (status, answer["error"]["code"]) == (503, -32010)
    assert time.monotonic() - started < 1.0
    # a batch says it per member, with 200 for the batch itself
    status, answer = gw.post([call("HelloService.Hello", ["x"], 5)])
    assert status == 200 and answer[0]["error"]["code"] == -32010
    # and the gateway recovers by itself when a node comes back
    serve_node("tests.services", ttl=2)
    wait_until(lambda: gw.post(call("HelloService.Hello", ["y"], 6))[0] == 200, timeout=10,
               interval=0.05, message="gateway sees the new node")


def test_declared_service_in_a_full_outage_since_before_start_is_503(serve_node, serve_gateway):
    # no node of HelloService has ever registered on this etcd when the gateway starts
    gw = serve_gateway("--timeout", "2", "--service", "HelloService")
    started = time.monotonic()
    status, answer = gw.post(call("HelloService.Hello", ["x"], 1))
    assert (status, answer["error"]["code"], answer["id"]) == (503, -32010, 1)
    assert time.monotonic() - started < 3
    # a name nobody declared or registered is still "no such method", and opens no watch
    status, answer = gw.post(call("Nobody.Hello", ["x"], 2))
    assert (status, answer["error"]["code"]) == (404, -32601)
    # the declared service is served as soon as a node registers
    serve_node("tests.services")
    wait_until(lambda: gw.post(call("HelloService.Hello", ["y"], 3)) == (
        200, {"jsonrpc": "2.0", "id": 3, "result": "hello:y"}), timeout=10, interval=0.05,
        message="gateway sees the first node")


def test_sigterm_drains_with_healthz_503_then_exits_0(serve_node, serve_gateway):
    serve_node("tests.services", ttl=3)
    gw = serve_gateway("--grace", "3")
    assert gw.request("GET", "/healthz")[0] == 200
    gw.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: gw.request("GET", "/healthz")[0] == 503, timeout=5, interval=0.02,
               message="/healthz 503 while draining")
    # still answering calls while load balancers notice
    assert gw.post(call("HelloService.Hello", ["z"], 1))[0] == 200
    assert gw.proc.wait(timeout=20) == 0


def test_keep_alive_calls_are_not_delayed_by_nagle(gw):
    # an answer written in two pieces with Nagle on would wait for a delayed ACK: ~40 ms a call
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    body = json.dumps(call("Spec.subtract", [3, 1], 1))
    took = []
    try:
        for _ in range(30):
            started = time.perf_counter()
            conn.request("POST", "/", body)
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["result"] == 2
            took.append(time.perf_counter() - started)
    finally:
        conn.close()
    took.sort()
    assert took[len(took) // 2] < 0.02, f"median {took[len(took) // 2] * 1000:.1f} ms"


def test_slow_and_idle_http_connections_are_closed_at_their_flags(serve_node, serve_gateway):
    serve_node("tests.services", ttl=3)
    gw = serve_gateway("--request-timeout", "0.5", "--idle-timeout", "0.8")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in answer
        assert sock.recv(4096) == b"" and time.monotonic() - started < 1.5
    body = json.dumps(call("HelloService.Hello", ["x"], 1)).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        assert b"hello:x" in sock.recv(4096)
        started = time.monotonic()
        assert sock.recv(4096) == b""   # the gateway closed the idle keep-alive connection
        assert 0.7 < time.monotonic() - started < 2.0


@pytest.mark.parametrize("flag", ["--request-timeout", "--idle-timeout"])
def test_a_bound_of_zero_is_a_usage_error(flag):
    out = subprocess.run([sys.executable, "-m", "framework", "gateway", flag, "0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"error: {flag[2:].replace('-', '_')} must be more than 0, got 0.0" in out.stderr
