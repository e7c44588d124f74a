"""Proxies: ``client.HelloService.Hello("x")`` -> ``Client._call(service, method, params)``.

Attribute access on a :class:`~framework.client.Client` gives a :class:`ServiceProxy`, and on that
a :class:`MethodProxy`; both are cached as plain attributes, so a call costs no lookup after the
first one.
"""
from __future__ import annotations

from typing import Any


class ServiceProxy:
    """``client.HelloService``; attribute access gives cached :class:`MethodProxy` objects."""

    __slots__ = ("_client", "_service", "__dict__")

    def __init__(self, client: Any, service: str):
        self._client = client
        self._service = service

    def __getattr__(self, name: str) -> "MethodProxy":
        if name.startswith("_"):
            raise AttributeError(name)
        # a plain attribute from now on, as in Client.__getattr__
        return self.__dict__.setdefault(name, MethodProxy(self._client, self._service, name))

    def __repr__(self) -> str:
        return f"<ServiceProxy {self._service}>"


class MethodProxy:
    __slots__ = ("_client", "_service", "_name", "_method")

    def __init__(self, client: Any, service: str, name: str):
        self._client, self._service, self._name = client, service, name
        self._method = f"{service}.{name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args and kwargs:
            raise TypeError("JSON-RPC params are either positional or named, not both")
        return self._client._call(self._service, self._name, self._method, kwargs or args)

    def __repr__(self) -> str:
        return f"<MethodProxy {self._method}>"
