"""Tracing (issue 10): OpenTelemetry spans with the right parents across gateway -> Front -> Back in
real processes (each with the SDK and an in-memory exporter, tests/otel_site), and the W3C context
(trace id, baggage) reaching every hop when no SDK is configured at all."""
import json
import os
import signal
import time

import pytest

import framework
from framework.testing import wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
HEADERS = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "baggage": "tenant=acme,lane=none",
           "Content-Type": "application/json"}
SITE = os.path.join(os.path.dirname(__file__), "otel_site")


def _chain(gateway):
    request = {"jsonrpc": "2.0", "id": 1, "method": "Front.Chain", "params": []}
    status, answer = wait_until(
        lambda: (lambda a: a if a[0] == 200 and "result" in a[1] else None)(
            gateway.post(request, headers=HEADERS)),
        message="the gateway to reach Front and Back")
    return answer["result"]


def test_spans_have_the_right_parents_from_gateway_to_front_to_back(serve_node, serve_gateway,
                                                                     tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMEWORK_TEST_SPANS", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", SITE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    front = serve_node("tests.chain_front")
    back = serve_node("tests.chain_back")
    gateway = serve_gateway("--service", "Front")
    result = _chain(gateway)
    status, failed = gateway.post({"jsonrpc": "2.0", "id": 2, "method": "Back.Touch",
                                   "params": [None]}, headers=HEADERS)
    assert failed["error"]["code"] == -32000
    for proc in (gateway.proc, front.proc, back.proc):   # a clean exit writes the spans
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    spans = {}
    for name in os.listdir(tmp_path):
        for span in json.load(open(tmp_path / name)):
            spans.setdefault((span["name"], span["kind"]), []).append(span)
    (gw_client,) = [s for s in spans[("Front/Chain", "CLIENT")]]
    (front_server,) = spans[("Front/Chain", "SERVER")]
    (front_client,) = spans[("Back/Seen", "CLIENT")]
    (back_server,) = spans[("Back/Seen", "SERVER")]
    chain = [gw_client, front_server, front_client, back_server]
    assert {s["trace_id"] for s in chain} == {TRACE_ID}
    assert gw_client["parent_id"] == CALLER_SPAN            # the gateway continued the caller
    assert front_server["parent_id"] == gw_client["span_id"]
    assert front_client["parent_id"] == front_server["span_id"]
    assert back_server["parent_id"] == front_client["span_id"]
    assert result["back"]["trace_id"] == TRACE_ID
    for span in chain:
        attrs = span["attributes"]
        assert attrs["rpc.system"] == "jsonrpc" and attrs["rpc.service"] in ("Front", "Back")
        assert attrs["rpc.method"] in ("Chain", "Seen")
    host, port = front.address.rsplit(":", 1)
    assert gw_client["attributes"]["server.address"] == host
    assert gw_client["attributes"]["server.port"] == int(port)
    assert [e["name"] for e in gw_client["events"]] == ["attempt"]
    (touch,) = spans[("Back/Touch", "CLIENT")]   # an error: its code, and the span's status
    assert touch["attributes"]["rpc.jsonrpc.error_code"] == -32000 and touch["status"] == "ERROR"
    (touched,) = spans[("Back/Touch", "SERVER")]
    assert touched["attributes"]["rpc.jsonrpc.error_code"] == -32000
    assert len(os.listdir(tmp_path)) == 3   # three processes, each with its own exporter


def test_without_an_sdk_the_trace_id_and_baggage_reach_every_hop(serve_node, serve_gateway,
                                                                  make_client):
    serve_node("tests.chain_front")
    serve_node("tests.chain_back")
    gateway = serve_gateway("--service", "Front")
    result = _chain(gateway)
    assert result["front"]["trace_id"] == result["back"]["trace_id"] == TRACE_ID
    assert result["back"]["metadata"]["baggage"] == HEADERS["baggage"]
    # a caller's own client sends the context it was given the same way
    client = make_client(timeout=3)
    chain = client.call("Front.Chain", metadata={"traceparent": HEADERS["traceparent"],
                                                 "baggage": "tenant=acme"})
    assert chain["back"]["trace_id"] == TRACE_ID
    assert chain["back"]["metadata"]["baggage"] == "tenant=acme"


def test_each_attempt_and_hedge_is_an_event_of_the_client_span(serve_node, make_client):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    nodes = [serve_node("tests.chain_back") for _ in range(2)]
    client = make_client(timeout=1.0, tracing=framework.Tracing(provider=provider))
    wait_until(lambda: len(client.nodes("Back")) == 2, message="both nodes listed")
    # no latency history yet: the hedge goes at half the time left (0.5 s), before the answer
    assert client.Back.Sleep(0.7) in {n.pid for n in nodes}
    (span,) = exporter.get_finished_spans()
    assert span.name == "Back/Sleep" and span.kind.name == "CLIENT"
    assert [e.name for e in span.events] == ["attempt", "hedge"]
    addresses = {f"{e.attributes['server.address']}:{e.attributes['server.port']}"
                 for e in span.events}
    assert addresses == {n.address for n in nodes}
    assert span.status.status_code.name == "UNSET"


def test_the_tracing_extra_is_optional():
    # without an SDK provider no span is made, and the client never needs one
    assert framework.Tracing().tracer(time.monotonic()) is None
    assert framework.Tracing(enabled=False).tracer(time.monotonic()) is None
    with pytest.raises(ValueError):
        framework.calls.load("no-colon")
