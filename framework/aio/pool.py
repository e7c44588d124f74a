"""Connection pool on an event loop: one :class:`~framework.aio.connection.AioConnection` per node
address (one per worker of a ``--workers N`` node), opened on first use - one connect per address
however many callers want it - and replaced once it dies or its node goes away.

It is :class:`framework.pool.Pool` (same settings, keys, choice of connection, stall check,
``forget`` and ``close``) with connections opened on the running loop; use one from a single event
loop.
"""
from __future__ import annotations

import asyncio
from typing import Any, Dict

from .. import protocol
from ..errors import NotSent
from ..pool import Pool
from .connection import AioConnection


class AioPool(Pool):
    """Connections keyed by node address, for callers on one event loop."""

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        self._pack = protocol.request_packer()   # one loop thread: one Packer for every connection
        self._opening: Dict[str, asyncio.Future] = {}

    async def get(self, address: str, timeout: float, ways: Any = 1) -> AioConnection:
        """The connection to ``address`` (``ways``: the node's ``workers``), chosen as
        :meth:`framework.pool.Pool.get` chooses; NotSent when it cannot be opened in ``timeout``."""
        found = Pool.get(self, address, timeout, ways)
        if type(found) is not str:
            return found
        opening = self._opening.get(found)
        if opening is None:
            if self.closed:
                raise NotSent("client is closed")
            opening = self._opening[found] = asyncio.ensure_future(
                self._connect(found, address, timeout))
            opening.add_done_callback(_retrieved)
        try:   # a caller with less time left than the connect's bound leaves it to the others
            return await asyncio.wait_for(asyncio.shield(opening), timeout)
        except asyncio.TimeoutError:
            raise NotSent(f"cannot connect to {address}: timed out") from None

    def _open(self, key: str, address: str, timeout: float) -> str:  # type: ignore[override]
        """Where :meth:`Pool.get` would connect: here it names the missing connection, which
        :meth:`get` opens on the loop."""
        return key

    async def _connect(self, key: str, address: str, timeout: float) -> AioConnection:
        try:
            conn = await AioConnection.open(address, min(timeout, self.connect_timeout), self._pack,
                                            self.max_frame, self.tls, self.stall_after,
                                            self.write_stall)
        finally:
            self._opening.pop(key, None)
        if self.closed:
            conn.close()
            raise NotSent("client is closed")
        self._conns[key] = conn
        return conn


def _retrieved(opening: asyncio.Future) -> None:
    """A connect's failure reaches its callers; should all of them have stopped waiting, it is
    not worth a 'never retrieved' warning."""
    if not opening.cancelled():
        opening.exception()
