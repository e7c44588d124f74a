"""Interceptors, the current call and metadata (issue 10), on real node processes: order and
rejection, metadata from client, gateway headers and interceptors to the handler, bounds on
metadata, and deadlines that calls made inside a handler inherit."""
import socket
import time

import msgpack
import pytest

import framework
from framework import protocol
from framework.testing import wait_until
from tests.test_cli import cli


def _rpc(address: str, obj: dict) -> dict:
    """One raw request on a fresh connection (no client-side checks): its answer."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(protocol.pack(obj))
        reader = protocol.FrameReader()
        while True:
            bodies = reader.feed(sock.recv(65536))
            if bodies:
                return msgpack.unpackb(bodies[0], raw=False)


def test_interceptors_run_in_order_and_can_reject_before_the_handler(serve_node, make_client,
                                                                    tmp_path):
    node = serve_node("tests.chain_services", extra_args=[
        "--interceptor", "tests.interceptors:outer", "--interceptor", "tests.interceptors:inner",
        "--interceptor", "tests.interceptors:deny_mallory",
        "--interceptor", "tests.interceptors:tag_result"])
    seen = []

    def first(call, proceed):
        seen.append(("first", call.service, call.method, call.remaining() > 0))
        call.metadata["x-user"] = call.metadata.get("x-user", "alice")
        return proceed(call)

    def second(call, proceed):
        seen.append(("second", call.metadata["x-user"]))
        result = proceed(call)
        return {"second saw": result} if call.method == "Seen" else result

    client = make_client(timeout=3, interceptors=[first, second])
    answer = client.Back.Seen()["second saw"]
    assert seen == [("first", "Back", "Seen", True), ("second", "alice")], seen
    assert answer["pid"] == node.pid
    assert answer["metadata"]["x-user"] == "alice"            # set by a client interceptor
    assert answer["metadata"]["x-order"] == "outer,inner,"    # node interceptors, outermost first
    assert answer["peer"][0] == "127.0.0.1" and answer["peer"][1] > 0
    assert 0 < answer["remaining"] <= 3
    assert client.Back.Sleep(0) == {"wrapped": node.pid}      # an interceptor wraps the result

    # rejected by a node interceptor: the handler never runs (no side effect)
    path = tmp_path / "touched"
    with pytest.raises(framework.Unauthorized, match="mallory may not call"):
        client.call("Back.Touch", [str(path)], metadata={"x-user": "mallory"})
    assert not path.exists()
    assert client.call("Back.Touch", [str(path)], metadata={"x-user": "bob"}) == node.pid
    assert path.read_text() == f"{node.pid}\n"
    assert framework.current_call() is None   # outside any handler


def test_a_bad_interceptor_name_is_a_usage_error(etcd):
    r = cli("serve", "tests.chain_services", "--etcd", etcd.endpoint,
            "--interceptor", "tests.interceptors:nope")
    assert r.returncode == 2 and "--interceptor" in r.stderr and "nope" in r.stderr, r.stderr


def test_oversized_metadata_gets_invalid_request_and_the_node_stays_up(serve_node, make_client):
    node = serve_node("tests.chain_services")
    base = {"jsonrpc": "2.0", "id": 1, "method": "Back.Seen", "params": []}
    for metadata in ({f"k{i}": "v" for i in range(33)}, {"k": "v" * 5000},
                     {"K-Upper": "v"}, {"k": 7}, ["not", "a", "map"],
                     {f"k{i}": "v" * 4000 for i in range(3)}):
        answer = _rpc(node.address, {**base, "meta": {"metadata": metadata}})
        assert answer["error"]["code"] == -32600, (metadata if len(str(metadata)) < 99 else "", answer)
    good = _rpc(node.address, {**base, "meta": {"metadata": {"x-user": "carol"}}})
    assert good["result"]["metadata"] == {"x-user": "carol"} and good["result"]["pid"] == node.pid
    client = make_client(timeout=3)
    with pytest.raises(framework.InvalidRequest, match="at most 4096"):   # refused before sending
        client.call("Back.Seen", metadata={"k": "v" * 5000})
    assert client.Back.Seen()["pid"] == node.pid
    metrics = node_metrics(node)
    assert 'framework_calls_total{method="Seen",outcome="invalid_request",service="Back"} 6.0' \
        in metrics, metrics


def node_metrics(node) -> str:
    from framework.testing.wire import http_request
    status, _, body = http_request(node.address, "GET", "/metrics")
    assert status == 200
    return body.decode()


def test_calls_made_inside_a_handler_inherit_its_deadline_and_are_counted(serve_node,
                                                                        make_client):
    front = serve_node("tests.chain_services")
    client = make_client(timeout=0.6)
    wait_until(lambda: client.nodes("Back"), message="the node to be listed")
    chain = client.Front.Chain()
    assert chain["back"]["remaining"] <= chain["front"]["remaining"] <= 0.6
    # Back.Sleep(5) through a client whose default timeout is 5 s: the handler's call ends at the
    # deadline of the call it serves (0.6 s), not 5 s later
    started = time.monotonic()
    try:   # the inner call ends at the node's copy of the deadline, a hair before the caller's:
        answer = client.Front.Slow(5)   # its "timeout" answer may still arrive in time
        # (a timer fires at its time or a little after, on a busy host: 0.6001 s once)
        assert answer["outcome"] == "timeout" and answer["took"] < 0.6 + 0.1, answer
    except framework.Timeout:
        pass
    took = time.monotonic() - started
    assert took < 0.6 + 0.3, took
    # the node's own client counted both calls in its /metrics; the inner one gave up in time
    metrics = wait_until(lambda: (lambda m: m if 'outcome="timeout",service="Back"} 1.0' in m
                                  else None)(node_metrics(front)),
                         message="the inner call's timeout to be counted")
    assert 'framework_client_calls_total{method="Seen",outcome="ok",service="Back"} 1.0' \
        in metrics, metrics
    assert 'framework_client_calls_total{method="Sleep",outcome="timeout",service="Back"} 1.0' \
        in metrics, metrics
    inner = float(metrics.split(
        'framework_client_call_duration_seconds_sum{method="Sleep",service="Back"} ')[1].split()[0])
    assert inner < 0.6 + 0.1, inner


def test_the_gateway_forwards_only_the_headers_it_was_told_to(serve_node, serve_gateway):
    serve_node("tests.chain_services")
    gateway = serve_gateway("--forward-header", "X-User", "--service", "Back")
    request = {"jsonrpc": "2.0", "id": 1, "method": "Back.Seen", "params": [],
               "meta": {"metadata": {"x-admin": "yes"}}}   # body metadata is not passed on
    headers = {"X-User": "dave", "X-Other": "no", "Content-Type": "application/json",
               "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    status, answer = wait_until(lambda: _ok(gateway.post(request, headers=headers)),
                                message="the gateway to reach the node")
    seen = answer["result"]["metadata"]
    assert seen["x-user"] == "dave" and "x-other" not in seen and "x-admin" not in seen, seen
    assert answer["result"]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    status, answer = gateway.post(request, headers={**headers, "X-User": "u" * 5000})
    assert status == 400 and answer["error"]["code"] == -32600, (status, answer)
    assert _ok(gateway.post(request, headers=headers))   # still serving


def _ok(answer):
    status, body = answer
    return answer if status == 200 and "result" in (body or {}) else None
