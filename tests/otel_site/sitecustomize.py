"""Loaded at start-up by processes whose PYTHONPATH includes this directory (tests/test_tracing.py):
configures the OpenTelemetry SDK with an in-memory exporter, and writes the finished spans as JSON
to ``$FRAMEWORK_TEST_SPANS/<pid>.json`` when the process exits."""
import atexit
import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))
trace.set_tracer_provider(_provider)


def _dump():
    spans = []
    for s in _exporter.get_finished_spans():
        spans.append({"name": s.name, "kind": s.kind.name,
                      "trace_id": format(s.context.trace_id, "032x"),
                      "span_id": format(s.context.span_id, "016x"),
                      "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                      "attributes": dict(s.attributes), "status": s.status.status_code.name,
                      "events": [{"name": e.name, "attributes": dict(e.attributes)}
                                 for e in s.events]})
    with open(os.path.join(os.environ["FRAMEWORK_TEST_SPANS"], f"{os.getpid()}.json"), "w") as f:
        json.dump(spans, f)


atexit.register(_dump)
