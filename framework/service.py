"""Service definition: the ``@service`` / ``@idempotent`` decorators and the ``Service`` base class.

A service is a class; its RPC surface is resolved once, here, into a :class:`ServiceSpec`: the name and a
table ``{method name: MethodSpec}``. Only public functions defined on the subclass (and its non-framework
bases) are in the table. Names that start with ``_`` and attributes of :class:`Service` itself are never in
it, so no request string can reach them: dispatch looks names up in this table and never calls ``getattr``
with a name from the wire.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class Service:
    """Base class of services. ``self.client`` is a :class:`framework.Client` that shares the serving
    process's discovery cache, so a service calls other services exactly as any caller does."""

    #: set by @service
    __service_name__: str = ""
    #: set by the Server before the first request
    client: Any = None


def idempotent(fn: Callable) -> Callable:
    """Mark a method as safe to re-send to another node when the first node failed mid-call."""
    fn.__rpc_idempotent__ = True
    return fn


def service(arg=None):
    """Class decorator: ``@service`` or ``@service("Name")``. The name defaults to the class name."""
    def wrap(cls, name=None):
        if not (isinstance(cls, type) and issubclass(cls, Service)):
            raise TypeError("@framework.service decorates subclasses of framework.Service")
        name = name or cls.__name__
        if not _NAME.match(name):
            raise ValueError(f"invalid service name {name!r}: use letters, digits, '_' and '-'")
        cls.__service_name__ = name
        cls.__rpc_spec__ = None  # resolved lazily by spec_of, once
        return cls

    if isinstance(arg, type):
        return wrap(arg)
    return lambda cls: wrap(cls, arg)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    function: Callable
    signature: inspect.Signature
    idempotent: bool


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    cls: type
    methods: Dict[str, MethodSpec] = field(default_factory=dict)


_FORBIDDEN = frozenset(dir(Service))


def spec_of(cls: type) -> ServiceSpec:
    """Resolve (once) the RPC method table of a decorated service class."""
    cached = cls.__dict__.get("__rpc_spec__")
    if cached is not None:
        return cached
    name: Optional[str] = cls.__dict__.get("__service_name__")
    if not name:
        raise TypeError(f"{cls.__qualname__} is not decorated with @framework.service")
    methods = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass is Service or not issubclass(klass, Service):
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_") or attr in _FORBIDDEN:
                continue
            if isinstance(value, (staticmethod, classmethod)) or not inspect.isfunction(value):
                continue
            sig = inspect.signature(value)
            params = list(sig.parameters.values())[1:]  # drop self
            methods[attr] = MethodSpec(attr, value, sig.replace(parameters=params),
                                       bool(getattr(value, "__rpc_idempotent__", False)))
    spec = ServiceSpec(name, cls, methods)
    cls.__rpc_spec__ = spec
    return spec


def services_in_module(module) -> list:
    """Every ``@service`` class defined in ``module`` (imported ones are left out)."""
    found = []
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, Service)
                and value.__dict__.get("__service_name__") and value.__module__ == module.__name__):
            found.append(value)
    return found
