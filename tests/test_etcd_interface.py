"""The etcd seam: :class:`framework.etcd.EtcdAPI` and :class:`framework.etcd.WatchStream` are what the
framework uses of etcd. The real client (``Etcd``, ``Watch``) and the unit tests' fake (``FakeEtcd``,
``FakeWatch``) must both match them member for member, so the fake cannot drift from the real thing;
and the Protocols must name exactly what the framework's modules use. No etcd process needed."""
import ast
import inspect
import pathlib

import pytest

import framework
from framework.etcd import Etcd, EtcdAPI, Watch, WatchStream
from tests.fake_etcd import FakeEtcd, FakeWatch

FRAMEWORK = pathlib.Path(framework.__file__).parent

#: modules the usage scan skips, and why; none of them may import framework.etcd
NOT_CONSUMERS = {
    "etcd": "the implementation itself",
    "devetcd": "'etcd' there is an EtcdProcess (a local etcd server), not a client",
    "testing": "'etcd' there is the EtcdProcess fixture, not a client",
}
#: the names the framework gives an EtcdAPI object (variables, parameters, attributes)
CLIENT_NAMES = {"etcd", "etcd_client"}
#: the names the framework gives a WatchStream object
WATCH_NAMES = {"watch"}


def _methods(protocol) -> dict:
    """Name -> function for the methods the Protocol declares itself (not typing's machinery)."""
    prefix = protocol.__name__ + "."
    return {name: value for name, value in vars(protocol).items()
            if inspect.isfunction(value) and value.__qualname__.startswith(prefix)}


def _attributes(protocol) -> set:
    return set(vars(protocol).get("__annotations__", {}))


def _shape(function) -> list:
    """What callers depend on: parameter names, order, kinds and defaults (not annotations)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


PAIRS = [(EtcdAPI, Etcd), (EtcdAPI, FakeEtcd), (WatchStream, Watch), (WatchStream, FakeWatch)]
METHODS = [(protocol, impl, name) for protocol, impl in PAIRS for name in sorted(_methods(protocol))]


def test_the_protocols_declare_what_the_framework_needs():
    assert set(_methods(EtcdAPI)) == {"get_prefix", "put", "grant", "keepalive", "revoke", "delete",
                                     "watch"}
    assert _attributes(EtcdAPI) == {"cluster_id", "endpoints"}
    assert set(_methods(WatchStream)) == {"__iter__", "close"}


@pytest.mark.parametrize("protocol, impl, name", METHODS,
                         ids=[f"{impl.__name__}.{name}" for _, impl, name in METHODS])
def test_implementation_method_matches_the_protocol(protocol, impl, name):
    method = getattr(impl, name, None)
    assert callable(method), f"{impl.__name__} lacks {protocol.__name__}.{name}"
    assert _shape(method) == _shape(_methods(protocol)[name]), (
        f"{impl.__name__}.{name}{inspect.signature(method)} does not match "
        f"{protocol.__name__}.{name}{inspect.signature(_methods(protocol)[name])}")


@pytest.mark.parametrize("impl", [Watch, FakeWatch])
def test_watch_iterator_is_a_generator(impl):
    # discovery closes the iterator it got from iter(watch) when it stops reading early
    assert inspect.isgeneratorfunction(impl.__iter__)


@pytest.mark.parametrize("make", [lambda: Etcd("127.0.0.1:2379"), FakeEtcd], ids=["Etcd", "FakeEtcd"])
def test_implementation_has_the_protocol_attributes(make):
    client = make()   # Etcd connects only when called
    for name in _attributes(EtcdAPI):
        assert hasattr(client, name), f"{type(client).__name__} lacks {name}"
    assert isinstance(client.endpoints, list) and all(isinstance(e, str) for e in client.endpoints)
    assert isinstance(client, EtcdAPI)


def test_fake_watch_is_a_watch_stream():
    assert isinstance(FakeEtcd().watch("/services/", 1), WatchStream)


def _receiver_named(node: ast.AST, names: set) -> bool:
    """``etcd.x``, ``self.etcd.x``, ``a.b.etcd.x``... for ``names == {"etcd"}``."""
    return ((isinstance(node, ast.Name) and node.id in names)
            or (isinstance(node, ast.Attribute) and node.attr in names))


def _imports_etcd(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("etcd", "framework.etcd"):
            return True
        if isinstance(node, ast.Import) and any(a.name == "framework.etcd" for a in node.names):
            return True
    return False


def _parse(path) -> ast.AST:
    text = path.read_text()
    try:
        return ast.parse(text, str(path))
    except SystemError:
        # CPython 3.11's check of its AST constructor's recursion depth can misfire
        # (python/cpython#106905: "AST constructor recursion depth mismatch"); it did once in a
        # fresh-clone run. The source is the same: parse it again
        return ast.parse(text, str(path))


def _used_members(names: set) -> dict:
    """Attribute name -> ["module:line", ...] for every ``<receiver>.<attribute>`` in the framework
    whose receiver is called one of ``names``."""
    used: dict = {}
    for path in sorted(FRAMEWORK.rglob("*.py")):
        tree = _parse(path)
        rel = path.relative_to(FRAMEWORK)
        top = rel.parts[0].removesuffix(".py")   # a module, or the package it belongs to
        if top in NOT_CONSUMERS:
            assert not _imports_etcd(tree), (
                f"{rel} now imports framework.etcd; drop {top} from NOT_CONSUMERS "
                f"({NOT_CONSUMERS[top]}) so its uses are checked")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _receiver_named(node.value, names):
                used.setdefault(node.attr, []).append(f"{rel}:{node.lineno}")
    return used


def test_the_etcd_protocol_is_exactly_what_the_framework_uses():
    used = _used_members(CLIENT_NAMES)
    declared = set(_methods(EtcdAPI)) | _attributes(EtcdAPI)
    missing = {name: where for name, where in used.items() if name not in declared}
    assert not missing, f"the framework uses etcd members EtcdAPI lacks: {missing}"
    unused = declared - set(used)
    assert not unused, (f"EtcdAPI declares {sorted(unused)}, which no framework module uses "
                        f"through a name in {sorted(CLIENT_NAMES)}")


def test_the_watch_protocol_covers_what_the_framework_uses():
    used = _used_members(WATCH_NAMES)
    assert used, f"no use of a watch found through a name in {sorted(WATCH_NAMES)}"
    missing = {name: where for name, where in used.items() if name not in _methods(WatchStream)}
    assert not missing, f"the framework uses watch members WatchStream lacks: {missing}"
