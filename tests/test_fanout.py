"""Scale: one registration fans out to hundreds of discovery caches in other processes, each with
a watch of its own or sharing one per process (real etcd, real watcher processes:
``bench.fanout``), and a cache of many nodes keeps lean records whose tables the nodes share."""
import pytest

from bench.fanout import measure
from framework import record
from framework.service import spec_of
from tests.services import HelloService


@pytest.mark.parametrize("share", [False, True], ids=["a watch each", "shared in a process"])
def test_every_cache_sees_a_registration_and_a_deregistration(etcd, share):
    result = measure(watchers=120, procs=2, registrations=2, etcd=etcd, timeout=15.0, share=share)
    assert result["listening"] == 120                       # every cache listed before the first put
    assert result["missed"] == 0
    assert result["join"]["n"] == result["leave"]["n"] == 2 * 120   # each change, in every cache
    if share:   # one watch per process (and a keep-alive connection each for lists)
        assert result["etcd_connections"] <= 2 * 2 + 4, result["etcd_connections"]
    else:   # a watch of its own per cache
        assert result["etcd_connections"] >= 120
    assert result["join"]["max_ms"] < 15000


def _record(address: str, pid: int, labels: dict) -> bytes:
    built = record.build(spec_of(HelloService), address, 1700000000.5, "1.2.3",
                         metadata={"owner": "team-a"}, labels=labels)
    return record.encode({**built, "pid": pid}).encode()


def test_a_cache_keeps_what_callers_use_and_shares_equal_tables():
    records = record.Records()
    a = records.parse("/s/HelloService/10.0.0.1:1", _record("10.0.0.1:1", 11, {"zone": "eu", "weight": "5"}))
    b = records.parse("/s/HelloService/10.0.0.2:1", _record("10.0.0.2:1", 12, {"zone": "eu", "weight": "5"}))
    c = records.parse("/s/HelloService/10.0.0.3:1", _record("10.0.0.3:1", 13, {"zone": "us"}))
    full = record.parse("/s/HelloService/10.0.0.1:1", _record("10.0.0.1:1", 11, {"zone": "eu", "weight": "5"}))
    assert a.meta["methods"] is b.meta["methods"] is c.meta["methods"]
    assert a.meta["labels"] is b.meta["labels"] and c.meta["labels"] == {"zone": "us"}
    assert a.meta["hostname"] is b.meta["hostname"]
    # every question a caller asks has the answer the whole record gives
    for method in ("Hello", "Fail", "Nope"):
        assert a.idempotent(method) == full.idempotent(method)
        assert a.has_method(method) == full.has_method(method)
    assert (a.label("zone"), a.weight(100), c.weight(100)) == ("eu", 5, 100)
    assert a.matches({"zone": "eu"}) and not c.matches({"zone": "eu"})
    # what operators are shown stays; the service name (the cache's key) and other metadata go
    assert {k: a.meta[k] for k in ("pid", "version", "started")} == {
        "pid": 11, "version": "1.2.3", "started": 1700000000.5}
    assert "owner" not in a.meta and "service" not in a.meta and full.meta["owner"] == "team-a"
    assert record.methods_line(a) == record.methods_line(full)
    assert records.parse("/s/Other/10.0.0.9:1", b"10.0.0.9:1").meta == {"address": "10.0.0.9:1"}
    assert records.parse("/s/Other/x", b"not a record") is None
