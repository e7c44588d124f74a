"""Routing by labels (issue 10, first part): nodes publish labels in their registry record, and a
client can keep its calls to the nodes that have some of them while one of those is usable."""
import subprocess
import sys
import threading
import time

import pytest

import framework
from framework.testing import Load, wait_until
from tests.services import HelloService
from tests.test_cli import cli


def test_a_client_prefers_its_zone_and_falls_back_when_the_zone_is_gone(serve_node, make_client,
                                                                        etcd):
    eu = serve_node("tests.services", extra_args=["--label", "zone=eu-1", "--label", "version=v2"])
    us = [serve_node("tests.services", extra_args=["--label", "zone=us-1"]) for _ in range(2)]
    client = make_client(timeout=2, prefer={"zone": "eu-1"})
    wait_until(lambda: len(client.nodes("HelloService")) == 3, message="three nodes listed")
    listing = cli("ls", "HelloService", "--etcd", etcd.endpoint).stdout
    assert "labels[version=v2,zone=eu-1]" in listing and listing.count("labels[zone=us-1]") == 2
    watching = subprocess.Popen([sys.executable, "-m", "framework", "watch", "HelloService",
                                 "--etcd", etcd.endpoint], stdout=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(watching.stdout), daemon=True).start()
    try:
        wait_until(lambda: len(lines) >= 3, message="watch to show the 3 nodes present at start")
        first = list(lines)
    finally:
        watching.kill()
    assert sum("labels[zone=us-1]" in line for line in first) == 2, first

    with Load(lambda: client.HelloService.Pid(), callers=4) as load:
        load.wait_calls(400)
        assert set(load.by_result) == {eu.pid}, "only the preferred zone while it is usable"
        assert client.prefer_fallbacks == 0
        eu.terminate()   # the zone goes away: calls fall back to the others, none fails
        stopped = time.monotonic()
        wait_until(lambda: any(r.value != eu.pid and r.at > stopped for r in load.ok),
                   message="calls to go to another zone")
        wait_until(lambda: sum(1 for r in load.ok if r.at > stopped + 1.0) > 200,
                   message="calls a second after the zone went away")
    others = {r.value for r in load.ok if r.at > stopped + 1.0}
    print(f"\nprefer zone=eu-1: {load.by_result[eu.pid]} calls to it, then "
          f"{sum(load.by_result[n.pid] for n in us)} to us-1 after it stopped; "
          f"{client.prefer_fallbacks} fallbacks counted, {len(load.errors)} failed")
    assert load.errors == []
    assert others <= {n.pid for n in us} and others
    assert client.prefer_fallbacks > 0


def test_bad_labels_are_refused_with_a_clear_error(etcd):
    r = cli("serve", "tests.services", "--etcd", etcd.endpoint, "--label", "zone=" + "x" * 100)
    assert r.returncode == 2 and "--label" in r.stderr and "at most 63" in r.stderr, r.stderr
    r = cli("serve", "tests.services", "--etcd", etcd.endpoint, "--label", "zone")
    assert r.returncode == 2 and "--label" in r.stderr, r.stderr
    with pytest.raises(ValueError, match="at most 16 labels"):
        framework.Server([HelloService], etcd=False, labels={f"k{i}": "v" for i in range(17)})
