"""Tracing: OpenTelemetry spans for calls, and the W3C trace context they carry in metadata.

Optional: ``pip install framework[otel]`` brings ``opentelemetry-api``. With the API importable and
an SDK's ``TracerProvider`` configured by the application, a client makes a CLIENT span per logical
call (each attempt and each hedge is an event on it) and a node a SERVER span per handled call,
both named ``Service/method`` with the RPC semantic conventions (``rpc.system`` = "jsonrpc",
``rpc.service``, ``rpc.method``, ``rpc.jsonrpc.error_code``, ``server.address``, ``server.port``).

Without an SDK no span is made - the API's no-op spans would cost about 6 us a call and record
nothing - but the context still travels: a node keeps the ``traceparent``, ``tracestate`` and
``baggage`` it received in the current :class:`~framework.calls.Call`, and its handlers' calls
send them on (:func:`framework.calls.inherited`), so the trace id a caller sent reaches every hop.
"""
from __future__ import annotations

import sys
from importlib.util import find_spec
from typing import Any, Dict, Optional, Tuple

from . import __version__

#: OpenTelemetry's API modules, once loaded by _api()
_context: Any = None
_propagate: Any = None
_trace: Any = None
#: whether opentelemetry-api is installed, once available() looked
_installed: Optional[bool] = None


def _api() -> Any:
    """OpenTelemetry's ``trace`` module once the application has imported OpenTelemetry, else
    None. Configuring an SDK means importing it, so a process that never does has no span to make
    and never loads the API: about 40 ms of every node's, gateway's and CLI command's start."""
    global _context, _propagate, _trace
    if _trace is None and "opentelemetry.trace" in sys.modules:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:   # a broken install: propagation only, as without the extra
            return None
        _context, _propagate, _trace = context, propagate, trace
    return _trace


class Tracing:
    """Makes the spans of one client or node; ``enabled=False`` never makes any. ``provider``:
    the application's ``TracerProvider`` (default: OpenTelemetry's global one, once set)."""

    #: seconds between looks for an SDK provider while there is none (a look costs about 2.5 us)
    recheck = 1.0

    def __init__(self, enabled: bool = True, provider: Any = None):
        self.enabled = enabled and available()
        #: a TracerProvider of the application's own; None: OpenTelemetry's global one
        self.provider = provider
        self._tracer: Any = None
        self._look_at = 0.0

    def tracer(self, now: float) -> Any:
        """The framework's tracer once an SDK provider is configured, else None. An application
        may configure its SDK after building its clients: until then, this looks again at most
        every ``recheck`` seconds (``now``: the caller's ``time.monotonic()``)."""
        tracer = self._tracer
        if tracer is None and self.enabled:
            if now >= self._look_at:
                self._look_at = now + self.recheck
                trace = _api()
                if trace is not None:
                    provider = self.provider or trace.get_tracer_provider()
                    if not isinstance(provider, trace.ProxyTracerProvider):
                        tracer = self._tracer = provider.get_tracer("framework", __version__)
        return tracer

    # ---- the client side -------------------------------------------------------------------------

    def client_span(self, tracer: Any, service: str, method: str,
                    metadata: Dict[str, str]) -> Any:
        """Start the CLIENT span of a logical call and write its context into ``metadata``. Its
        parent is a ``traceparent`` already in ``metadata`` (a gateway continuing an HTTP
        caller's trace), else the current context (inside a handler: the node's SERVER span)."""
        parent = _propagate.extract(metadata) if "traceparent" in metadata else None
        span = tracer.start_span(f"{service}/{method}", context=parent,
                                 kind=_trace.SpanKind.CLIENT,
                                 attributes=_attributes(service, method))
        _propagate.inject(metadata, context=_trace.set_span_in_context(span, parent))
        return span

    @staticmethod
    def attempt(span: Any, address: str, hedge: bool = False) -> None:
        """An attempt (or a hedge) of the call went to ``address``."""
        host, _, port = address.rpartition(":")
        attributes = {"server.address": host, "server.port": int(port) if port.isdigit() else 0}
        span.add_event("hedge" if hedge else "attempt", attributes)
        span.set_attributes(attributes)   # the span ends naming the last node tried

    # ---- the node side ---------------------------------------------------------------------------

    def server_span(self, tracer: Any, service: str, method: str, metadata: Dict[str, str],
                    peer: Any) -> Tuple[Any, Any]:
        """Start the SERVER span of a handled call, child of the caller's ``traceparent``, and
        make it current (so the handler's own calls are its children): ``(span, token)``."""
        parent = _propagate.extract(metadata)
        attributes = _attributes(service, method)
        if isinstance(peer, tuple) and len(peer) >= 2:
            attributes["client.address"], attributes["client.port"] = str(peer[0]), int(peer[1])
        span = tracer.start_span(f"{service}/{method}", context=parent,
                                 kind=_trace.SpanKind.SERVER, attributes=attributes)
        return span, _context.attach(_trace.set_span_in_context(span, parent))

    @staticmethod
    def server_end(span: Any, token: Any, error: Optional[dict]) -> None:
        """End a SERVER span; ``error``: the JSON-RPC error object it was answered with."""
        _context.detach(token)
        end(span, error)


def end(span: Any, error: Any) -> None:
    """End ``span``. ``error``: what the call failed with (an exception, or a JSON-RPC error
    object), None when it succeeded; its code becomes ``rpc.jsonrpc.error_code``."""
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else getattr(error, "code", None)
        if isinstance(code, int):
            span.set_attribute("rpc.jsonrpc.error_code", code)
        message = error.get("message") if isinstance(error, dict) else str(error)
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, str(message or code)))
    span.end()


def _attributes(service: str, method: str) -> Dict[str, Any]:
    return {"rpc.system": "jsonrpc", "rpc.service": service, "rpc.method": method,
            "rpc.jsonrpc.version": "2.0"}


def available() -> bool:
    """True when ``opentelemetry-api`` is installed (it is not imported until the application
    imports OpenTelemetry itself: see :func:`_api`)."""
    global _installed
    if _installed is None:
        try:
            _installed = find_spec("opentelemetry.trace") is not None
        except (ImportError, ValueError):
            _installed = False
    return _installed

