"""JSON-RPC 2.0 over HTTP: an HTTP request body -> request objects -> ``invoke`` -> one HTTP answer.

Shared by the gateway (``invoke`` forwards through a :class:`framework.Client`) and by every node's
own ``POST /`` (``invoke`` runs the node's :class:`~framework.dispatch.Dispatcher`). Only this module
parses JSON from the network; both fronts get the same limits and the same answers:

* the body is read in bounded chunks; more than ``Limits.max_body`` bytes -> 413 and one -32600
  error, and the connection is closed rather than the rest being read;
* invalid UTF-8, invalid JSON, ``NaN``/``Infinity`` and nesting deeper than ``Limits.max_depth``
  -> -32700 with id null;
* ``[]`` -> one -32600; a batch longer than ``Limits.max_batch`` -> one -32600 (400);
* batch members run concurrently; notifications run too but are left out of the answer, and a body
  of only notifications gets 204 and no body.

HTTP status of a single (non-batch) call, from its error code (a batch is always 200)::

    result                          200      -32601 method not found             404
    notification                    204      -32010 unavailable, -32001, -32003  503
    -32700, -32600, -32602          400      -32002 deadline passed              504
    -32004 unauthorized             403      -32603 internal (gateway: 502)      500 (JSON body)
    handler error (-32000, app)     200      body too large                      413
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import gevent

from . import protocol
from .errors import (BodyTooLarge, InternalError, InvalidRequest, ParseError, RpcError,
                     http_status)

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"

#: invoke(request) -> a response object (``protocol.response`` / ``protocol.error_response``); never raises
Invoke = Callable[[protocol.Request], dict]


@dataclass(frozen=True)
class Limits:
    """What one HTTP request may cost. Every field is configurable from the CLI."""

    max_body: int = 1024 * 1024     # bytes of request body
    max_batch: int = 100            # members of one batch
    max_depth: int = 32             # nesting of arrays/objects, the envelope included


_REASONS = {200: "200 OK", 204: "204 No Content", 400: "400 Bad Request", 403: "403 Forbidden",
            404: "404 Not Found", 405: "405 Method Not Allowed", 413: "413 Content Too Large",
            500: "500 Internal Server Error", 502: "502 Bad Gateway",
            503: "503 Service Unavailable",
            504: "504 Gateway Timeout"}


def status_line(code: int) -> str:
    return _REASONS.get(code, f"{code} Status")


def read_body(environ: dict, max_body: int) -> bytes:
    """The request body, never more than ``max_body`` bytes of it (Content-Length or chunked);
    raises :class:`BodyTooLarge` as soon as it is known to be longer."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            n = int(length)
        except ValueError:
            n = -1
        if n > max_body:
            raise _too_large(max_body)
        if n >= 0:
            return stream.read(n)
    # chunked or unknown length: read at most one byte past the limit, in pieces
    parts: List[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(65536, max_body + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total > max_body:
            raise _too_large(max_body)
    return b"".join(parts)


def _too_large(max_body: int) -> BodyTooLarge:
    return BodyTooLarge(f"Invalid Request: body larger than {max_body} bytes")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# built once: json.loads/json.dumps given options build a new decoder/encoder on every call
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def decode(body: bytes, max_depth: int) -> Any:
    """Body -> JSON value; raises :class:`ParseError` for bad UTF-8, bad JSON or too deep nesting."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"Parse error: body is not valid UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        if text.startswith("\ufeff"):   # as json.loads says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except RecursionError:
        raise ParseError(f"Parse error: nesting deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise ParseError(f"Parse error: {exc}") from None
    # a value cannot nest deeper than it has brackets: most bodies need no walk
    if body.count(b"[") + body.count(b"{") > max_depth and _depth_exceeds(value, max_depth):
        raise ParseError(f"Parse error: nesting deeper than {max_depth} levels")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    # iterative, so a hostile document cannot exhaust the Python stack here
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


def encode(response: dict) -> bytes:
    """One response object -> JSON bytes; a result JSON cannot carry becomes a -32603 error."""
    return _encode(response)[1]


def _encode(response: dict) -> Tuple[dict, bytes]:
    try:
        return response, _ENCODER.encode(response).encode("utf-8")
    except (TypeError, ValueError) as exc:
        response = protocol.error_response(response.get("id"), InternalError(
            f"result could not be encoded as JSON: {exc}"))
        return response, json.dumps(response, separators=(",", ":")).encode("utf-8")


class JsonRpcHttp:
    """Turns one HTTP body into ``(status, body or None)``, calling ``invoke`` for each request.

    ``spawn`` runs one invocation and returns something with ``.get()`` (a greenlet); a node passes
    its own pool's ``spawn`` so HTTP calls share the node's concurrency limit.
    """

    def __init__(self, invoke: Invoke, limits: Limits = Limits(),
                 spawn: Optional[Callable[..., Any]] = None,
                 statuses: Optional[Dict[int, int]] = None):
        self.invoke = invoke
        self.limits = limits
        self.spawn = spawn
        self.statuses = statuses or {}

    def status_for(self, response: dict) -> int:
        """The HTTP status of a single call's response object."""
        error = response.get("error")
        if error is None:
            return 200
        code = error.get("code")
        return self.statuses.get(code) or http_status(code)

    def refuse(self, exc: RpcError) -> Tuple[int, bytes]:
        """The answer to a body refused as a whole: ``exc`` with id null, at ``exc``'s HTTP status."""
        return exc.http_status, encode(protocol.error_response(None, exc))

    def handle(self, body: bytes, meta: Optional[dict] = None) -> Tuple[int, Optional[bytes]]:
        """``meta`` (e.g. a token from an Authorization header) fills in each request's ``meta``."""
        try:
            value = decode(body, self.limits.max_depth)
        except ParseError as exc:
            return self.refuse(exc)
        if isinstance(value, list):
            return self._batch(value, meta)
        response = self._one_or_error(value, meta)
        if response is None:
            return 204, None
        response, body = _encode(response)
        return self.status_for(response), body

    def _parse(self, obj: Any, meta: Optional[dict]):
        """-> (request, None) or (None, error response)."""
        try:
            req = protocol.parse_request(obj)
        except RpcError as exc:
            return None, protocol.error_response(getattr(exc, "request_id", None), exc)
        if meta:
            req = req._replace(meta={**req.meta, **meta})
        return req, None

    def _run(self, req: protocol.Request) -> dict:
        try:
            return self.invoke(req)
        except Exception as exc:  # an invoke bug must still answer in JSON, never a 500 traceback
            log.exception("invoking %s failed", req.method)
            return protocol.error_response(req.id, InternalError(f"internal error: {type(exc).__name__}"))

    def _one_or_error(self, obj: Any, meta: Optional[dict]) -> Optional[dict]:
        req, error = self._parse(obj, meta)
        if error is not None:
            return error
        response = self.spawn(self._run, req).get() if self.spawn else self._run(req)
        return None if req.is_notification else response

    def _batch(self, items: list, meta: Optional[dict]) -> Tuple[int, Optional[bytes]]:
        if not items:
            return self.refuse(InvalidRequest("Invalid Request: empty batch"))
        if len(items) > self.limits.max_batch:
            return self.refuse(InvalidRequest(
                f"Invalid Request: batch of {len(items)} exceeds the limit of {self.limits.max_batch}"))
        spawn = self.spawn or gevent.spawn
        slots: List[Any] = []   # a response dict, a greenlet, or None for a notification
        for obj in items:
            req, error = self._parse(obj, meta)
            if error is not None:
                slots.append(error)
            else:
                slots.append((spawn(self._run, req), req.is_notification))
        parts = []
        for slot in slots:
            if isinstance(slot, tuple):
                greenlet, notification = slot
                response = greenlet.get()
                if notification:
                    continue
                slot = response
            parts.append(encode(slot))
        if not parts:
            return 204, None
        return 200, b"[" + b",".join(parts) + b"]"


def respond(start_response, status: int, body: Optional[bytes],
            extra_headers: Iterable[Tuple[str, str]] = ()) -> List[bytes]:
    """Send a JSON (or empty) answer through WSGI ``start_response``."""
    headers = list(extra_headers)
    if body is None:
        headers.append(("Content-Length", "0"))
        start_response(status_line(status), headers)
        return []
    headers += [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body)))]
    start_response(status_line(status), headers)
    return [body]


def serve_post(rpc: JsonRpcHttp, environ: dict, start_response,
               meta: Optional[dict] = None) -> Tuple[int, List[bytes]]:
    """The whole ``POST /`` exchange; returns the status (for metrics) and the WSGI body."""
    try:
        body = read_body(environ, rpc.limits.max_body)
    except BodyTooLarge as exc:
        refused: RpcError = exc
    except (OSError, ValueError) as exc:  # client hung up or sent a broken chunked body
        refused = ParseError(f"Parse error: could not read the body: {exc}")
    else:
        status, payload = rpc.handle(body, meta)
        return status, respond(start_response, status, payload)
    status, payload = rpc.refuse(refused)
    # the body was not read to its end, so the connection cannot be reused
    return status, respond(start_response, status, payload, [("Connection", "close")])
