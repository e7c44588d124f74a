"""framework.aio: the asyncio client - ``async with Client(etcd=...) as client: await
client.HelloService.Hello("x")``.

A facade: :class:`~framework.aio.client.Client` (the calls), :class:`~framework.aio.pool.AioPool`
(connections on the loop, :mod:`framework.aio.connection`). Importing it starts nothing and patches
nothing: it runs in a plain asyncio application (FastAPI, aiohttp, ...), and needs no gevent hub.
"""
from .client import Client
from .connection import AioConnection
from .pool import AioPool

__all__ = ["Client", "AioPool", "AioConnection"]
