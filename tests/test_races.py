"""A hedge's race when its backup fails: the first node frozen (SIGSTOP, not yet found out), the
backup's node killed (SIGKILL; its long lease keeps it listed, so the backup cannot be sent), and
a third node healthy. The race sends one more attempt, to the third node, instead of waiting on
the frozen one to the deadline. A scripted balancer (the ``Client(balancer=...)`` extension
point) makes the choices of nodes deterministic."""
import time

import pytest

from framework.balancer import RoundRobin
from framework.testing import wait_until


class Scripted(RoundRobin):
    """A balancer with a fixed preference: the first node of ``order`` offered (RoundRobin's
    bookkeeping, which keeps none)."""

    def __init__(self, order):
        super().__init__()
        self.order = order

    def pick(self, nodes, usable=None, weights=None):
        ranked = sorted(nodes, key=lambda n: self.order.index(n.address))
        return ranked[0] if ranked else None


@pytest.mark.parametrize("world", ["threads", "asyncio"])
def test_a_refused_backup_is_replaced_while_the_first_node_is_frozen(serve_node, make_client,
                                                                     etcd, world):
    frozen = serve_node("tests.services", ttl=30)
    dead = serve_node("tests.services", ttl=30)
    healthy = serve_node("tests.services")
    order = [frozen.address, dead.address, healthy.address]
    dead.kill()
    if world == "threads":
        client = make_client(timeout=1.0, balancer=lambda: Scripted(order))
        wait_until(lambda: len(client.nodes("WorkService")) == 3, message="three nodes listed")
        frozen.freeze()
        started = time.monotonic()
        pid = client.WorkService.Read(1)
    else:
        pid, started = _in_asyncio(etcd, order, frozen)
    took = time.monotonic() - started
    frozen.thaw()
    print(f"\n{world}: answered by the third node after {took:.3f} s (hedge at 0.5 s)")
    assert pid == healthy.pid
    assert took < 1.0


def _in_asyncio(etcd, order, frozen):
    import asyncio

    from framework.aio import Client

    async def scenario():
        async with Client(etcd=etcd.endpoint, timeout=1.0,
                          balancer=lambda: Scripted(order)) as client:
            await client.listed("WorkService")
            while len(client.nodes("WorkService")) < 3:
                await asyncio.sleep(0.05)
            frozen.freeze()
            started = time.monotonic()
            return await client.WorkService.Read(1), started

    return asyncio.run(asyncio.wait_for(scenario(), 20))
