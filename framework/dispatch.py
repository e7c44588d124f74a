"""Dispatch: a decoded request object -> the handler -> a response object. Pure: no sockets, no etcd.

The method table is built once per server from the services' :class:`~framework.service.ServiceSpec`;
a request's ``method`` string is only ever used as a key into that table. Each call runs as the
current :class:`~framework.calls.Call` (``framework.current_call()``), inside the node's
interceptors and, when OpenTelemetry is configured, inside a SERVER span
(:mod:`framework.tracing`). The table also holds ``rpc.discover``: the node's OpenRPC document
(:mod:`framework.schema`).
"""
from __future__ import annotations

import hmac
import inspect
import logging
import math
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from . import calls, protocol, schema
from .errors import DeadlineExceeded, InvalidParams, MethodNotFound, RpcError, Unauthorized
from .service import MethodSpec, spec_of
from .tracing import Tracing

log = logging.getLogger(__name__)

_NO_META: dict = {}   # shared, never written


class Dispatcher:
    """Maps ``"Service.method"`` to a bound handler and runs it.

    ``observe(service, method, outcome, seconds)`` is called after each call (metrics hook);
    ``started(received, started)`` as each call read at ``received`` starts (the node's
    :class:`~framework.shedding.Shedder`). A call whose deadline passed before it started does
    not start: it is observed with the outcome ``"expired"``.
    ``interceptors``: ``fn(call, proceed)`` run around every handler, the first outermost.
    """

    def __init__(self, instances: Iterable[Any], token: Optional[str] = None,
                 observe: Optional[Callable[[str, str, str, float], None]] = None,
                 started: Optional[Callable[[float, float], None]] = None,
                 interceptors: Iterable[calls.Interceptor] = (),
                 tracing: Optional[Tracing] = None):
        #: "Service.method" -> (spec, bound handler, service name, arity, proceed): ``proceed``
        #: runs the interceptors, if any, and then the handler
        self.table: Dict[str, Tuple[MethodSpec, Callable, str, Optional[Tuple[int, float]],
                                    Optional[Callable]]] = {}
        self.token = token
        self._token = token.encode() if token is not None else b""
        self.observe = observe
        self.started = started
        self.interceptors = list(interceptors)
        self.tracing = tracing or Tracing()
        classes = []
        for instance in instances:
            spec = spec_of(type(instance))
            if spec.name == "rpc":
                raise ValueError("the service name 'rpc' is reserved: JSON-RPC keeps the 'rpc.' "
                                 f"methods ({schema.DISCOVER}) for itself")
            classes.append(type(instance))
            for name, mspec in spec.methods.items():
                bound = mspec.function.__get__(instance, type(instance))
                proceed = calls.chain(self.interceptors, _handler(bound))
                self.table[f"{spec.name}.{name}"] = (mspec, bound, spec.name,
                                                     _arity(mspec.signature), proceed)
        self._add_discover(classes)

    def _add_discover(self, classes: list) -> None:
        """``rpc.discover``, a method of no service: the OpenRPC document of the node's services
        (:mod:`framework.schema`), made on its first call. It runs as any call does (token,
        interceptors, metrics as service ``rpc``)."""
        discover = schema.Discover(classes)
        signature = inspect.signature(discover)
        self.table[schema.DISCOVER] = (MethodSpec("discover", discover, signature, True), discover,
                                       "rpc", _arity(signature),
                                       calls.chain(self.interceptors, _handler(discover)))

    def handle(self, obj: Any, received: Optional[float] = None,
               peer: Any = None) -> Optional[dict]:
        """Run one decoded request object; returns the response object, or None for a notification."""
        if type(obj) is dict:
            # The usual request - an int or str id, a str method, list or map params - passes
            # protocol.parse_request's rules checked inline here: building the Request was half
            # of the dispatch cost. Anything else takes the full path below.
            rid = obj.get("id")
            method = obj.get("method")
            params = obj.get("params")
            if ((type(rid) is int or type(rid) is str) and type(method) is str
                    and (type(params) is list or type(params) is dict)
                    and obj.get("jsonrpc") == "2.0"):
                meta = obj.get("meta")
                return self._call(rid, method, params, meta if type(meta) is dict else _NO_META,
                                  received, peer)
        try:
            req = protocol.parse_request(obj)
        except RpcError as exc:
            return protocol.error_response(getattr(exc, "request_id", None), exc)
        response = self.call(req, received, peer)
        return None if req.is_notification else response

    def call(self, req: protocol.Request, received: Optional[float] = None,
             peer: Any = None) -> dict:
        return self._call(req.id, req.method, req.params, req.meta, received, peer)

    def _call(self, rid: Any, method: str, params: Any, meta: dict,
              received: Optional[float], peer: Any = None) -> dict:
        if self.token is not None:
            # checked before the lookup, so a caller without the token cannot probe method names
            token = meta.get("token")
            if not (isinstance(token, str) and hmac.compare_digest(token.encode(), self._token)):
                return protocol.error_response(rid, Unauthorized("Unauthorized"))
        entry = self.table.get(method)
        if entry is None:
            return protocol.error_response(rid, MethodNotFound(f"Method not found: {method}"))
        mspec, bound, service_name, arity, proceed = entry
        started = time.monotonic()
        timeout_ms = meta.get("timeout_ms")
        deadline = math.inf
        if isinstance(timeout_ms, (int, float)):
            deadline = (started if received is None else received) + timeout_ms / 1000.0
            if received is not None and started > deadline:
                if self.observe is not None:
                    self.observe(service_name, mspec.name, "expired", None)
                return protocol.error_response(rid, DeadlineExceeded(
                    "deadline passed before the call started"))
        if received is not None and self.started is not None:
            self.started(received, started)
        outcome = "ok"
        try:
            metadata = meta.get("metadata")
            try:
                if metadata is not None:
                    calls.check_metadata(metadata)
                # positional params against a plain signature: two comparisons, not Signature.bind
                if arity is None or type(params) is not list or \
                        not arity[0] <= len(params) <= arity[1]:
                    _bind(mspec, params)
            except RpcError as exc:
                outcome = "invalid_params" if isinstance(exc, InvalidParams) else "invalid_request"
                return protocol.error_response(rid, exc)
            tracer = self.tracing.tracer(started) if self.tracing.enabled else None
            if tracer is None and not self.interceptors:   # the handler alone: Call built lazily
                token = calls.enter((service_name, mspec.name, params, metadata, deadline, peer))
                try:
                    result = bound(**params) if type(params) is dict else bound(*params)
                except Exception as exc:  # the handler's failure is the caller's answer, not ours
                    outcome = "error"
                    log.debug("handler %s raised", method, exc_info=True)
                    return protocol.error_response(rid, exc)
                finally:
                    calls.leave(token)
                return protocol.response(rid, result)
            call = calls.Call(service_name, mspec.name, params,
                              {} if metadata is None else metadata, deadline, peer)
            response = self._run(rid, call, tracer, proceed)
            if "error" in response:
                outcome = "error"
            return response
        finally:
            if self.observe is not None:
                self.observe(service_name, mspec.name, outcome, time.monotonic() - started)

    def _run(self, rid: Any, call: calls.Call, tracer: Any, proceed: Callable) -> dict:
        """Run the handler as the current call, inside the interceptors and, with ``tracer``, a
        SERVER span: its response."""
        span = None
        if tracer is not None:
            span, context_token = self.tracing.server_span(tracer, call.service, call.method,
                                                           call.metadata, call.peer)
            call.span = span
        token = calls.enter(call)
        try:
            response = protocol.response(rid, proceed(call))
        except Exception as exc:  # the handler's failure is the caller's answer, not ours
            log.debug("handler %s.%s raised", call.service, call.method, exc_info=True)
            response = protocol.error_response(rid, exc)
        finally:
            calls.leave(token)
        if span is not None:
            self.tracing.server_end(span, context_token, response.get("error"))
        return response


def _handler(bound: Callable) -> Callable[[calls.Call], Any]:
    """The innermost ``proceed`` of an interceptor chain: the handler, with the call's params."""
    def run(call: calls.Call) -> Any:
        params = call.params
        return bound(**params) if isinstance(params, dict) else bound(*params)
    return run


def _bind(mspec: MethodSpec, params: Any) -> None:
    """InvalidParams unless ``params`` bind to the method's signature."""
    try:
        if isinstance(params, dict):
            mspec.signature.bind(**params)
        else:
            mspec.signature.bind(*params)
    except TypeError as exc:
        raise InvalidParams(f"Invalid params: {exc}") from None


def _arity(signature: inspect.Signature) -> Optional[Tuple[int, float]]:
    """``(least, most)`` positional arguments that bind to ``signature``; None when a list of
    positional arguments alone can never bind it (a required keyword-only parameter)."""
    least, most = 0, 0.0
    for p in signature.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            most = float("inf")
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            most += 1
            if p.default is p.empty:
                least += 1
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return None
    return least, most
