"""The client keeps its cache current in a plain threaded program and in a gevent-patched one."""

import pytest

from framework.testing import wait_until
from tests.probes import start_probe


@pytest.mark.parametrize("world", ["plain", "patched"])
def test_cache_stays_current_while_the_caller_sleeps(world, tmp_path, etcd, serve_node, processes):
    first = serve_node("tests.services")
    flag = tmp_path / "go"
    args = ["tests/probe_client.py", etcd.endpoint, str(flag)]
    if world == "patched":
        args.append("--patched")
    proc, parsed = start_probe(processes, *args)
    wait_until(lambda: any("ready" in m for m in parsed()), timeout=15)
    assert [m for m in parsed() if "ready" in m][0]["ready"] == [first.address]

    second = serve_node("tests.services")
    wait_until(lambda: any(second.address in m.get("added", ()) for m in parsed()), timeout=10,
               message="the sleeping caller's listener to see the new node")
    first.kill()
    wait_until(lambda: any(first.address in m.get("removed", ()) for m in parsed()), timeout=10,
               message="the sleeping caller's cache to drop the killed node")
    flag.write_text("go")
    assert proc.wait(30) == 0, proc.stderr.read()
    final = parsed()[-1]
    assert final["errors"] == []
    assert final["calls"] == 400
    assert final["pids"] == [second.pid]
    assert final["nodes"] == [second.address]
