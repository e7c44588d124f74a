"""Service schemas: a service class -> its OpenRPC document -> what ``rpc.discover`` answers.

``rpc.discover`` (JSON-RPC keeps the ``rpc.`` names for such extensions) answers with an OpenRPC
document (https://spec.open-rpc.org, version 1.3.2): the role reflection plays for gRPC. In steps:

1. :func:`describe` - one ``@service`` class -> its document, from each method's signature, type
   hints and docstring: parameters in order, required or optional (with their defaults), JSON
   Schema types where the hints allow (:mod:`framework.hints`; no hint, or one it cannot map, is
   ``{}``: any value), the result, ``x-idempotent``, and the framework's errors a call may get
   (refs to ``components.errors``, made from :mod:`framework.errors`). Made once per class;
2. :func:`node_document` - what a node answers: its one service's document, or the :func:`merge`
   of its services' documents (:class:`Discover` is the dispatcher's ``rpc.discover`` handler);
3. :func:`fetch` - one service's document, asked of one of its live nodes with a plain
   ``rpc.discover`` and cut down to that service's methods (:func:`select`);
4. :class:`Catalog` - the gateway's one document of every live service (``GET /openrpc.json`` and
   ``rpc.discover`` on its ``POST /``), each service's part kept until its set of nodes changes.

Method names are the names callers send, ``"Service.method"``, so merged documents never clash.
``*args`` and ``**kwargs`` are no parameters of the document: a method taking them says so with
``x-var-positional`` / ``x-var-keyword`` (the parameter's name). ``paramStructure`` is ``by-name``
when the method has keyword-only parameters, ``by-position`` when it has positional-only ones, else
``either``. The meta-schema the documents are valid against ships as ``openrpc_meta_schema.json``
(:func:`meta_schema`).
"""
from __future__ import annotations

import collections
import copy
import inspect
import json
import logging
import os
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import __version__, errors
from .hints import NOT_JSON, jsonable, nullable, parse_docstring, schema_of, type_hints
from .service import MethodSpec, spec_of

log = logging.getLogger(__name__)

OPENRPC = "1.3.2"
DISCOVER = "rpc.discover"
META_SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openrpc_meta_schema.json")

#: errors any call may get, beyond the request-level ones (parse error, invalid request, method
#: not found) that the JSON-RPC spec already gives every method
CALL_ERRORS = (errors.InvalidParams, errors.RemoteError, errors.InternalError,
               errors.Unauthorized, errors.GoingAway, errors.Overloaded,
               errors.DeadlineExceeded, errors.Timeout, errors.ServiceUnavailable)


def meta_schema() -> dict:
    """The OpenRPC meta-schema (draft-07, self-contained: validating against it fetches nothing)."""
    with open(META_SCHEMA, encoding="utf-8") as f:
        return json.load(f)


# ---- one service -> its document -----------------------------------------------------------------

def error_components() -> Dict[str, dict]:
    """``components.errors``: each of :data:`CALL_ERRORS` by its class name."""
    return {cls.__name__: {"code": cls.code, "message": parse_docstring(cls.__doc__)[0]
                           .replace("``", "")} for cls in CALL_ERRORS}


def method_object(service: str, mspec: MethodSpec) -> dict:
    """The OpenRPC method object of one method of ``service``."""
    hints = type_hints(mspec.function)
    summary, description, docs, returns = parse_docstring(mspec.function.__doc__)
    method: Dict[str, Any] = {"name": f"{service}.{mspec.name}"}
    if summary:
        method["summary"] = summary
    if description:
        method["description"] = description
    params, structure, extra = [], "either", {}
    for p in mspec.signature.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            extra["x-var-positional"] = p.name
            continue
        if p.kind is p.VAR_KEYWORD:
            extra["x-var-keyword"] = p.name
            continue
        if p.kind is p.POSITIONAL_ONLY:
            structure = "by-position"
        elif p.kind is p.KEYWORD_ONLY:
            structure = "by-name"   # a list of params can never reach it
        params.append(_param(p, hints.get(p.name, Any), docs.get(p.name)))
    result: Dict[str, Any] = {"name": "result", "schema": schema_of(hints.get("return", Any))}
    if returns:
        result["description"] = returns
    method.update({"params": params, "paramStructure": structure, "result": result,
                   "errors": [{"$ref": f"#/components/errors/{cls.__name__}"}
                              for cls in CALL_ERRORS],
                   "x-idempotent": mspec.idempotent, **extra})
    return method


def _param(p: inspect.Parameter, hint: Any, doc: Optional[str]) -> dict:
    schema = schema_of(hint)
    required = p.default is p.empty
    if not required:
        if p.default is None:   # ``x: int = None`` takes null too
            schema = nullable(schema)
        default = jsonable(p.default)
        if default is not NOT_JSON:
            schema = {**schema, "default": default}
    out = {"name": p.name, "schema": schema, "required": required}
    if doc:
        out["description"] = doc
    return out


def describe(cls: type) -> dict:
    """The OpenRPC document of one ``@service`` class. Made once per class; each call returns a
    copy of its own. ``info.version`` is the class's ``__version__``, else the framework's."""
    doc = cls.__dict__.get("__openrpc__")
    if doc is None:
        spec = spec_of(cls)
        summary, description, _, _ = parse_docstring(cls.__doc__)
        info = {"title": spec.name, "version": str(getattr(cls, "__version__", None)
                                                   or __version__)}
        if summary:
            info["description"] = "\n\n".join(p for p in (summary, description) if p)
        doc = {"openrpc": OPENRPC, "info": info,
               "methods": [method_object(spec.name, m) for m in spec.methods.values()],
               "components": {"errors": error_components()}}
        cls.__openrpc__ = doc
    return copy.deepcopy(doc)


# ---- documents -> one ----------------------------------------------------------------------------

def merge(docs: Iterable[dict], title: str, extensions: Optional[dict] = None) -> dict:
    """One document with the methods of every doc in ``docs`` (the first of a name wins) and their
    components; ``extensions``: ``x-`` fields of the merged document."""
    methods: List[dict] = []
    names: set = set()
    components: Dict[str, dict] = {}
    for doc in docs:
        for method in doc.get("methods", ()):
            if method.get("name") not in names:
                names.add(method.get("name"))
                methods.append(method)
        for section, entries in (doc.get("components") or {}).items():
            for key, value in entries.items():
                components.setdefault(section, {}).setdefault(key, value)
    merged = {"openrpc": OPENRPC, "info": {"title": title, "version": __version__},
              "methods": methods, **(extensions or {})}
    if components:
        merged["components"] = components
    return merged


def select(doc: dict, service: str) -> dict:
    """``service``'s part of a node's document: its methods, titled with its name (the document
    itself when it describes nothing else)."""
    prefix = service + "."
    methods = [m for m in doc.get("methods", ()) if str(m.get("name", "")).startswith(prefix)]
    if len(methods) == len(doc.get("methods", ())):
        return doc
    info = {"title": service, "version": str((doc.get("info") or {}).get("version", __version__))}
    return {**doc, "info": info, "methods": methods}


def node_document(classes: Sequence[type]) -> dict:
    """What a node serving ``classes`` answers to ``rpc.discover``."""
    if len(classes) == 1:
        return describe(classes[0])
    return merge([describe(cls) for cls in classes],
                 ", ".join(spec_of(cls).name for cls in classes))


class Discover:
    """A node's ``rpc.discover`` handler: the document of its services, made on the first call."""

    def __init__(self, classes: Sequence[type]):
        self.classes = list(classes)
        self._doc: Optional[dict] = None

    def __call__(self) -> dict:
        if self._doc is None:
            self._doc = node_document(self.classes)
        return self._doc


# ---- asking nodes --------------------------------------------------------------------------------

def fetch(client: Any, service: str, timeout: float) -> dict:
    """``service``'s document, from one of its live nodes (a :class:`~framework.Client`'s): a
    plain ``rpc.discover`` sent to them in turn, usable ones first, until one answers. Raises
    ServiceUnavailable when the service has no live node, else the last node's error (a node of
    another implementation may answer MethodNotFound)."""
    deadline = time.monotonic() + timeout
    nodes = client.discovery.nodes(service, wait=timeout)
    if not nodes:
        raise errors.ServiceUnavailable(f"no live node of {service}")
    meta = {"token": client.token} if client.token is not None else None
    last: errors.RpcError = errors.Timeout(f"{DISCOVER} of {service}: no answer in {timeout}s")
    for node in sorted(nodes, key=lambda n: not client.usable(n)):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            conn = client.pool.get(node.address, remaining, node.meta.get("workers", 1))
            answer = conn.call(DISCOVER, (), remaining, meta)
        except errors.RpcError as exc:   # down, busy, or too old to know rpc.discover: the next
            last = exc
            continue
        if isinstance(answer, dict) and isinstance(answer.get("methods"), list):
            return select(answer, service)
        last = errors.ProtocolError(f"{node.address} answered {DISCOVER} with no document")
    raise last


class Catalog:
    """One document for every live service: each service's part fetched (:func:`fetch`) from one
    of its nodes and kept until its nodes change (an address, or a node's start time). A service
    whose nodes cannot describe it is left out, named with the reason in ``x-undescribed``, and
    asked again after :attr:`retry_after` seconds. Refreshes take turns (a lock)."""

    #: seconds a list of the registry's service names is used before it is read again
    names_every = 1.0
    #: seconds before a service whose document could not be had is asked again
    retry_after = 5.0
    #: services whose documents are kept; past it the least recently used are dropped
    max_services = 1024

    def __init__(self, client: Any, timeout: float = 5.0, title: str = "framework gateway"):
        self.client = client
        self.timeout = timeout
        self.title = title
        self._lock = threading.Lock()
        self._names: List[str] = []
        self._names_at = -float("inf")
        #: service -> (its nodes' identity, its document or the error, when to ask again)
        self._parts: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
        self._merged: Tuple[tuple, dict, bytes] = ((), {}, b"")

    def document(self) -> dict:
        """The merged document (ServiceUnavailable when the registry cannot be read)."""
        return self._current()[0]

    def http(self, environ: dict) -> Tuple[int, str, bytes]:
        """``GET /openrpc.json``: a :data:`framework.web.Page`."""
        try:
            return 200, "application/json", self._current()[1]
        except errors.RpcError as exc:
            body = json.dumps({"error": str(exc) or type(exc).__name__}).encode()
            return 503, "application/json", body

    def _current(self) -> Tuple[dict, bytes]:
        with self._lock:
            now = time.monotonic()
            if now - self._names_at >= self.names_every:
                try:
                    self._names = self.client.discovery.services()
                except errors.EtcdError as exc:
                    raise errors.ServiceUnavailable(f"registry unreachable: {exc}") from None
                self._names_at = now
            parts = [(name, self._part(name, now)) for name in self._names]
            # a part's ask-again time is new with each fetch: it stands for the fetch
            identity = tuple((name, part[2]) for name, part in parts if part is not None)
            if identity != self._merged[0]:
                live = [(name, part) for name, part in parts if part is not None]
                missing = {name: part[1] for name, part in live if isinstance(part[1], str)}
                doc = merge([part[1] for _, part in live if isinstance(part[1], dict)],
                            self.title, {"x-undescribed": missing} if missing else None)
                self._merged = (identity, doc, json.dumps(doc, separators=(",", ":")).encode())
            return self._merged[1], self._merged[2]

    def _part(self, service: str, now: float) -> Optional[tuple]:
        """``(identity, document or error text, ask again at)`` of a live service; None when it
        has no live node."""
        nodes = self.client.discovery.nodes(service, wait=self.timeout)
        if not nodes:
            return None
        identity = frozenset((n.address, n.meta.get("started")) for n in nodes)
        part = self._parts.get(service)
        if part is None or part[0] != identity or (isinstance(part[1], str) and now >= part[2]):
            try:
                found: Any = fetch(self.client, service, self.timeout)
            except errors.RpcError as exc:
                log.info("no OpenRPC document of %s: %s", service, exc)
                found = f"{type(exc).__name__}: {exc}"
            part = (identity, found, now + self.retry_after)
            self._parts[service] = part
            while len(self._parts) > self.max_services:
                self._parts.popitem(last=False)
        self._parts.move_to_end(service)
        return part
