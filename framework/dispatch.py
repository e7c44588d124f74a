"""Dispatch: a decoded request object -> the handler -> a response object. Pure: no sockets, no etcd.

The method table is built once per server from the services' :class:`~framework.service.ServiceSpec`;
a request's ``method`` string is only ever used as a key into that table.
"""
from __future__ import annotations

import hmac
import inspect
import logging
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from . import protocol
from .errors import DeadlineExceeded, InvalidParams, MethodNotFound, RpcError, Unauthorized
from .service import MethodSpec, spec_of

log = logging.getLogger(__name__)

_NO_META: dict = {}   # shared, never written


class Dispatcher:
    """Maps ``"Service.method"`` to a bound handler and runs it.

    ``observe(service, method, outcome, seconds)`` is called after each call (metrics hook);
    ``started(received, started)`` as each call read at ``received`` starts (the node's
    :class:`~framework.shedding.Shedder`). A call whose deadline passed before it started does
    not start: it is observed with the outcome ``"expired"``.
    """

    def __init__(self, instances: Iterable[Any], token: Optional[str] = None,
                 observe: Optional[Callable[[str, str, str, float], None]] = None,
                 started: Optional[Callable[[float, float], None]] = None):
        self.table: Dict[str, Tuple[MethodSpec, Callable, str, Optional[Tuple[int, float]]]] = {}
        self.token = token
        self._token = token.encode() if token is not None else b""
        self.observe = observe
        self.started = started
        for instance in instances:
            spec = spec_of(type(instance))
            for name, mspec in spec.methods.items():
                bound = mspec.function.__get__(instance, type(instance))
                self.table[f"{spec.name}.{name}"] = (mspec, bound, spec.name,
                                                     _arity(mspec.signature))

    def handle(self, obj: Any, received: Optional[float] = None) -> Optional[dict]:
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
                                  received)
        try:
            req = protocol.parse_request(obj)
        except RpcError as exc:
            return protocol.error_response(getattr(exc, "request_id", None), exc)
        response = self.call(req, received)
        return None if req.is_notification else response

    def call(self, req: protocol.Request, received: Optional[float] = None) -> dict:
        return self._call(req.id, req.method, req.params, req.meta, received)

    def _call(self, rid: Any, method: str, params: Any, meta: dict,
              received: Optional[float]) -> dict:
        if self.token is not None:
            # checked before the lookup, so a caller without the token cannot probe method names
            token = meta.get("token")
            if not (isinstance(token, str) and hmac.compare_digest(token.encode(), self._token)):
                return protocol.error_response(rid, Unauthorized("Unauthorized"))
        entry = self.table.get(method)
        if entry is None:
            return protocol.error_response(rid, MethodNotFound(f"Method not found: {method}"))
        mspec, bound, service_name, arity = entry
        started = time.monotonic()
        if received is not None:
            timeout_ms = meta.get("timeout_ms")
            if isinstance(timeout_ms, (int, float)) and started - received > timeout_ms / 1000.0:
                if self.observe is not None:
                    self.observe(service_name, mspec.name, "expired", None)
                return protocol.error_response(rid, DeadlineExceeded(
                    "deadline passed before the call started"))
            if self.started is not None:
                self.started(received, started)
        outcome = "ok"
        try:
            # positional params against a plain signature: two comparisons, not Signature.bind
            if arity is None or type(params) is not list or not arity[0] <= len(params) <= arity[1]:
                try:
                    if isinstance(params, dict):
                        mspec.signature.bind(**params)
                    else:
                        mspec.signature.bind(*params)
                except TypeError as exc:
                    outcome = "invalid_params"
                    return protocol.error_response(rid, InvalidParams(f"Invalid params: {exc}"))
            try:
                result = bound(**params) if isinstance(params, dict) else bound(*params)
            except Exception as exc:  # the handler's failure is the caller's answer, not ours
                outcome = "error"
                log.debug("handler %s raised", method, exc_info=True)
                return protocol.error_response(rid, exc)
            return protocol.response(rid, result)
        finally:
            if self.observe is not None:
                self.observe(service_name, mspec.name, outcome, time.monotonic() - started)


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
