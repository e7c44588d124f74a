"""The call in progress: :class:`Call`, :func:`current_call`, metadata, and interceptor chains.

A :class:`Call` is what interceptors see, on both sides of the wire. On a node, the dispatcher
builds one per request and makes it the current call while the handler (and its interceptors)
run, so ``framework.current_call()`` works in the handler and in anything it calls on the same
greenlet or thread; calls the handler makes through ``self.client`` inherit its deadline and its
W3C trace context (``traceparent``, ``tracestate``, ``baggage``) from there.

Metadata is a ``dict[str, str]`` that travels in the request's ``meta`` as ``meta["metadata"]``.
Keys are lower case (HTTP headers are case-insensitive; gRPC metadata keys are lower case too).
Both sides bound it (:func:`check_metadata`): at most :data:`MAX_ENTRIES` entries, keys of at most
:data:`MAX_KEY` characters, values of at most :data:`MAX_VALUE`, :data:`MAX_TOTAL` characters in
all. A node answers a request whose metadata breaks them with -32600 Invalid Request.

Interceptors are ``fn(call, proceed) -> result``: they run in list order, outermost first, and
each calls ``proceed(call)`` to go on (or raises an :class:`~framework.errors.RpcError` instead).
"""
from __future__ import annotations

import contextvars
import importlib
import re
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .errors import InvalidRequest

MAX_ENTRIES, MAX_KEY, MAX_VALUE, MAX_TOTAL = 32, 64, 4096, 8192
_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: the W3C trace context: passed on to every call a handler makes
PROPAGATED = ("traceparent", "tracestate", "baggage")

Interceptor = Callable[["Call", Callable[["Call"], Any]], Any]


class Call:
    """One call, as interceptors and handlers see it.

    ``service`` and ``method`` name it ("HelloService", "Hello"); ``params`` is a list or a dict;
    ``metadata`` a ``dict[str, str]`` sent in the request's ``meta``; ``deadline`` a
    ``time.monotonic()`` value (``math.inf``: none). ``peer``: on a node, the caller's
    ``(host, port)``; None on the client.
    """

    __slots__ = ("service", "method", "params", "metadata", "deadline", "peer", "span")

    def __init__(self, service: str, method: str, params: Any, metadata: Dict[str, str],
                 deadline: float, peer: Any = None):
        self.service = service
        self.method = method
        self.params = params
        self.metadata = metadata
        self.deadline = deadline
        self.peer = peer
        self.span: Any = None   # the call's OpenTelemetry span, when tracing made one

    @property
    def full_method(self) -> str:
        """``"Service.method"``, as on the wire."""
        return f"{self.service}.{self.method}"

    def remaining(self) -> float:
        """Seconds left before the deadline (0 once it passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def __repr__(self) -> str:
        return f"<Call {self.service}.{self.method} remaining={self.remaining():.3f}s>"


# The running handler's Call - or, until someone asks for it, the tuple of its parts: a node
# with no interceptors and no tracing builds no Call for a handler that never looks.
_current: contextvars.ContextVar = contextvars.ContextVar("framework_call", default=None)
current = _current.get   # the hot-path spelling: no wrapper frame
enter = _current.set
leave = _current.reset


def current_call() -> Optional[Call]:
    """The node-side :class:`Call` of the running handler; None outside one."""
    call = _current.get()
    if type(call) is tuple:   # (service, method, params, metadata or None, deadline, peer)
        service, method, params, metadata, deadline, peer = call
        call = Call(service, method, params, {} if metadata is None else metadata, deadline, peer)
        _current.set(call)   # the dispatcher's reset still restores what was there before
    return call


def check_metadata(metadata: Any) -> Dict[str, str]:
    """``metadata`` if it keeps the bounds above, else InvalidRequest saying which it broke."""
    if not isinstance(metadata, dict):
        raise InvalidRequest("Invalid Request: meta.metadata must be a map of strings")
    if len(metadata) > MAX_ENTRIES:
        raise InvalidRequest(f"Invalid Request: {len(metadata)} metadata entries "
                             f"(at most {MAX_ENTRIES})")
    total = 0
    for key, value in metadata.items():
        if not (type(key) is str and 0 < len(key) <= MAX_KEY and _KEY.match(key)):
            raise InvalidRequest(f"Invalid Request: metadata key {str(key)[:80]!r}: lower-case "
                                 f"letters, digits, '.', '_' and '-', at most {MAX_KEY}")
        if not (type(value) is str and len(value) <= MAX_VALUE):
            raise InvalidRequest(f"Invalid Request: metadata {key!r}: the value must be a string "
                                 f"of at most {MAX_VALUE} characters")
        total += len(key) + len(value)
    if total > MAX_TOTAL:
        raise InvalidRequest(f"Invalid Request: {total} characters of metadata "
                             f"(at most {MAX_TOTAL})")
    return metadata


def chain(interceptors: Sequence[Interceptor], last: Callable[[Call], Any]) -> Callable[[Call], Any]:
    """``proceed(call)`` that runs ``interceptors`` (first is outermost), then ``last``."""
    proceed = last
    for interceptor in reversed(list(interceptors)):
        proceed = _link(interceptor, proceed)
    return proceed


def _link(interceptor: Interceptor, inner: Callable[[Call], Any]) -> Callable[[Call], Any]:
    return lambda call: interceptor(call, inner)


def load(spec: str) -> Interceptor:
    """``"pkg.mod:fn"`` -> the interceptor ``fn`` (ValueError when it cannot be found)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"interceptor {spec!r}: use 'package.module:function'")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"interceptor {spec!r}: {exc}") from None
    if not callable(value):
        raise ValueError(f"interceptor {spec!r} is not callable")
    return value


# ---- baggage (W3C): only what lanes need ------------------------------------------------------

def baggage_get(header: Optional[str], key: str) -> Optional[str]:
    """The value of ``key`` in a W3C ``baggage`` header (properties after ';' dropped)."""
    if not header:
        return None
    for member in header.split(","):
        name, eq, value = member.partition("=")
        if eq and name.strip() == key:
            return value.split(";", 1)[0].strip()
    return None


def baggage_set(header: Optional[str], key: str, value: str) -> str:
    """``header`` with ``key=value`` in it (replacing an earlier value of ``key``)."""
    members = [m for m in (header or "").split(",")
               if m.strip() and m.partition("=")[0].strip() != key]
    return ",".join(members + [f"{key}={value}"])


def inherited(parent: Call) -> Tuple[float, Dict[str, str]]:
    """What a call made inside ``parent``'s handler takes from it: the deadline, and the trace
    context entries of its metadata."""
    md = parent.metadata
    return parent.deadline, {k: md[k] for k in PROPAGATED if k in md}
