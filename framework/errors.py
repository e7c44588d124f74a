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
-32002       DeadlineExceeded        the caller's deadline had passed before the work began
-32003       Overloaded              node refused the call for backpressure; NOT processed
-32004       Unauthorized            missing or wrong auth token
-32010       ServiceUnavailable      no live node (raised by clients and the gateway)
===========  ======================  =====================================================
"""
from __future__ import annotations

from typing import Any, Optional


class RpcError(Exception):
    """Base class of every error the framework raises."""

    code: int = -32603
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
    code = -32010


class Timeout(RpcError):
    """The call's deadline passed before an answer came back."""
    code = -32002


class CommunicationError(RpcError):
    """The connection to a node failed."""


class NotSent(CommunicationError):
    """The request never left this process (connect refused, node known dead): always safe to retry."""
    not_processed = True


class ConnectionLost(CommunicationError):
    """The connection broke after the request was written: the node may or may not have run it."""


class ProtocolError(CommunicationError):
    """The peer broke the wire protocol (bad frame, bad msgpack, oversized frame)."""


class EtcdError(RpcError):
    """etcd could not be reached or refused a request (raised by the registry client only)."""


# ---- JSON-RPC errors returned by a node ----------------------------------------------------------

class ParseError(RpcError):
    code = -32700


class InvalidRequest(RpcError):
    code = -32600


class MethodNotFound(RpcError):
    code = -32601


class InvalidParams(RpcError):
    code = -32602


class InternalError(RpcError):
    code = -32603


class RemoteError(RpcError):
    """The remote handler raised. ``data`` holds ``{"type": <exception class name>, "message": ...}``."""
    code = -32000

    @property
    def type(self) -> Optional[str]:
        return self.data.get("type") if isinstance(self.data, dict) else None

    def __str__(self) -> str:
        return f"{self.type or 'RemoteError'}: {self.message}"


class GoingAway(RpcError):
    """The node is shutting down and did not process the call; any node may take it instead."""
    code = -32001
    not_processed = True


class DeadlineExceeded(Timeout):
    """The node skipped the call because the caller's deadline had already passed."""
    code = -32002


class Overloaded(RpcError):
    """The node refused the call to protect itself; the call was not processed."""
    code = -32003
    not_processed = True


class Unauthorized(RpcError):
    code = -32004


_BY_CODE = {cls.code: cls for cls in (
    ParseError, InvalidRequest, MethodNotFound, InvalidParams, InternalError,
    GoingAway, DeadlineExceeded, Overloaded, Unauthorized, ServiceUnavailable)}


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


def error_object_for_exception(exc: BaseException) -> dict:
    """The JSON-RPC error object a node sends back when a handler raised ``exc``."""
    if isinstance(exc, RpcError):
        return exc.to_error_object()
    message = str(exc) or type(exc).__name__
    return {"code": RemoteError.code, "message": message,
            "data": {"type": type(exc).__name__, "message": message}}
