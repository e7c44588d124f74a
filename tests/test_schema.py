"""OpenRPC service schemas: documents made from signatures, type hints and docstrings
(framework.schema, framework.hints); what a real node answers to rpc.discover over msgpack and over
HTTP; the gateway's one document of every live service (GET /openrpc.json, POST rpc.discover);
``python -m framework describe``. Every document is validated against the shipped meta-schema.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import subprocess
import sys
from typing import Any, Dict, List, Literal, NamedTuple, Optional, Set, Tuple, TypedDict, Union

import jsonschema
import pytest

import framework
from framework import schema
from framework.dispatch import Dispatcher
from framework.hints import parse_docstring, schema_of
from framework.testing import (RawConnection, http_request, post_json, sample, scrape_metrics,
                               wait_until)

META = schema.meta_schema()
VALIDATOR = jsonschema.Draft7Validator(META)
DISCOVER = {"jsonrpc": "2.0", "id": 1, "method": "rpc.discover"}


def _resolve(doc: dict, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def valid(doc: dict) -> dict:
    """``doc`` after checking it against the OpenRPC meta-schema, and that its refs resolve."""
    errors = [e.message for e in VALIDATOR.iter_errors(doc)]
    assert not errors, errors
    for ref in _refs(doc):
        _resolve(doc, ref)
    return doc


def methods(doc: dict) -> Dict[str, dict]:
    return {m["name"]: m for m in doc["methods"]}


# ---- type hints -> JSON Schema ----------------------------------------------------------------

class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(NamedTuple):
    x: float
    y: float


@dataclasses.dataclass
class Tree:
    label: str
    children: List[Tree] = dataclasses.field(default_factory=list)


class Movie(TypedDict, total=False):
    title: str
    year: int


@pytest.mark.parametrize("hint, expected", [
    (int, {"type": "integer"}),
    (bool, {"type": "boolean"}),
    (float, {"type": "number"}),
    (str, {"type": "string"}),
    (None, {"type": "null"}),
    (bytes, {"type": "string", "format": "binary"}),
    (Any, {}),
    (object, {}),
    (List[str], {"type": "array", "items": {"type": "string"}}),
    (list, {"type": "array"}),
    (Set[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
    (Dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (Optional[int], {"type": ["integer", "null"]}),
    (Union[int, str], {"type": ["integer", "string"]}),
    (Union[int, List[str]], {"anyOf": [{"type": "integer"},
                                       {"type": "array", "items": {"type": "string"}}]}),
    (Optional[Any], {}),
    (Literal["a", "b"], {"enum": ["a", "b"]}),
    (Tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (Tuple[int, str], {"type": "array", "items": [{"type": "integer"}, {"type": "string"}],
                       "minItems": 2, "maxItems": 2}),
    (Color, {"title": "Color", "enum": ["red", "blue"]}),
    (Point, {"title": "Point", "type": "array", "items": [{"type": "number"}] * 2,
             "minItems": 2, "maxItems": 2}),
    (Movie, {"type": "object", "title": "Movie",
             "properties": {"title": {"type": "string"}, "year": {"type": "integer"}}}),
    (Tree, {"type": "object", "title": "Tree", "required": ["label"],
            "properties": {"label": {"type": "string"},
                           "children": {"type": "array", "items": {"title": "Tree"}}}}),
])
def test_type_hints_map_to_json_schema(hint, expected):
    assert schema_of(hint) == expected
    jsonschema.Draft7Validator.check_schema(expected)


def test_docstrings_give_summary_description_and_parameter_texts():
    rest = """Find things.

    Looks everywhere,
    twice.

    :param query: what to
        look for
    :param int limit: at most this many
    :returns: counts by name
    :rtype: dict
    """
    assert parse_docstring(rest) == ("Find things.", "Looks everywhere,\ntwice.",
                                     {"query": "what to look for", "limit": "at most this many"},
                                     "counts by name")
    google = """Add items.

    Args:
        items (list): what arrived,
            in order
        tags: counters
    Returns:
        the names now in stock
    """
    assert parse_docstring(google) == ("Add items.", "", {"items": "what arrived, in order",
                                                          "tags": "counters"},
                                       "the names now in stock")
    assert parse_docstring(None) == ("", "", {}, "")


# ---- one service -> its document --------------------------------------------------------------

@framework.service("Typed")
class Typed(framework.Service):
    """Methods of every shape the generator must handle."""

    @framework.idempotent
    def search(self, query: str, limit: int = 10,
               tags: Optional[List[str]] = None) -> Dict[str, int]:
        """Find things.

        :param query: what to look for
        :returns: counts by name
        """
        return {}

    def named(self, *, key: str, flag: bool = False) -> None:
        return None

    def positional(self, a: int, b: float = 1.5, /) -> float:
        return a + b

    def variadic(self, first, *rest, **options):
        return None

    def untyped(self, x, color=Color.RED, when=object()):
        return x

    def broken(self, x, y: int):
        return y

    # hints naming nothing (written here, where no linter reads them as code)
    broken.__annotations__.update(x="NoSuchType", **{"return": "AlsoMissing"})

    def _hidden(self):
        return None


def test_describe_documents_parameters_types_results_and_errors():
    doc = valid(schema.describe(Typed))
    assert doc["openrpc"] == "1.3.2"
    assert doc["info"] == {"title": "Typed", "version": framework.__version__,
                           "description": "Methods of every shape the generator must handle."}
    found = methods(doc)
    assert list(found) == ["Typed." + n for n in ("search", "named", "positional", "variadic",
                                                   "untyped", "broken")]
    search = found["Typed.search"]
    assert search["summary"] == "Find things." and search["x-idempotent"] is True
    assert search["paramStructure"] == "either"
    assert search["params"] == [
        {"name": "query", "schema": {"type": "string"}, "required": True,
         "description": "what to look for"},
        {"name": "limit", "schema": {"type": "integer", "default": 10}, "required": False},
        {"name": "tags", "required": False,
         "schema": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                    "default": None}}]
    assert search["result"] == {"name": "result", "description": "counts by name",
                                "schema": {"type": "object",
                                           "additionalProperties": {"type": "integer"}}}
    codes = {_resolve(doc, e["$ref"])["code"] for e in search["errors"]}
    assert {-32602, -32000, -32603, -32001, -32002, -32003, -32004, -32005, -32010} == codes

    named = found["Typed.named"]
    assert named["paramStructure"] == "by-name" and named["x-idempotent"] is False
    assert [(p["name"], p["required"]) for p in named["params"]] == [("key", True),
                                                                    ("flag", False)]
    assert named["result"]["schema"] == {"type": "null"}
    assert found["Typed.positional"]["paramStructure"] == "by-position"
    # *args and **kwargs are no params, but the method says it takes them
    variadic = found["Typed.variadic"]
    assert [p["name"] for p in variadic["params"]] == ["first"]
    assert variadic["params"][0]["schema"] == {} and variadic["result"]["schema"] == {}
    assert (variadic["x-var-positional"], variadic["x-var-keyword"]) == ("rest", "options")
    # a default JSON can carry is shown (an enum as its value); one it cannot is left out
    untyped = {p["name"]: p["schema"] for p in found["Typed.untyped"]["params"]}
    assert untyped == {"x": {}, "color": {"default": "red"}, "when": {}}
    # a hint naming nothing costs its own type only
    broken = found["Typed.broken"]
    assert [p["schema"] for p in broken["params"]] == [{}, {"type": "integer"}]
    assert broken["result"]["schema"] == {}


def test_describe_is_made_once_per_class_and_hands_out_copies():
    first = schema.describe(Typed)
    cached = Typed.__dict__["__openrpc__"]
    first["methods"].clear()
    assert schema.describe(Typed) == cached and len(cached["methods"]) == 6
    assert Typed.__dict__["__openrpc__"] is cached


def test_a_dispatcher_answers_rpc_discover_and_lists_it_nowhere():
    from tests.schema_services import Inventory
    dispatcher = Dispatcher([Typed(), Inventory()])
    answer = dispatcher.handle(DISCOVER)
    doc = valid(answer["result"])
    assert doc["info"]["title"] == "Typed, Inventory"
    names = set(methods(doc))
    assert "Inventory.count" in names and "Typed.search" in names
    assert not any("discover" in n for n in names)
    # made once: the same document for every call, by position or by name
    assert dispatcher.handle({**DISCOVER, "params": []})["result"] is doc
    assert dispatcher.handle({**DISCOVER, "params": {}})["result"] is doc
    assert dispatcher.handle({**DISCOVER, "params": [1]})["error"]["code"] == -32602
    # no service can be named "rpc": its methods would be the protocol's
    Rpc = framework.service("rpc")(type("Rpc", (framework.Service,), {"discover": lambda s: 1}))
    with pytest.raises(ValueError, match="reserved"):
        Dispatcher([Rpc()])


def test_merge_and_select():
    from tests.schema_services import Inventory
    merged = valid(schema.merge([schema.describe(Typed), schema.describe(Inventory),
                                 schema.describe(Typed)], "all", {"x-note": "merged"}))
    assert merged["info"]["title"] == "all" and merged["x-note"] == "merged"
    assert len(merged["methods"]) == 8   # Typed's methods once
    assert set(merged["components"]["errors"]) == {c.__name__ for c in schema.CALL_ERRORS}
    inventory = valid(schema.select(merged, "Inventory"))
    assert inventory["info"]["title"] == "Inventory"
    assert set(methods(inventory)) == {"Inventory.count", "Inventory.add"}
    alone = schema.describe(Inventory)
    assert schema.select(alone, "Inventory") is alone


def test_the_meta_schema_is_self_contained_and_rejects_broken_documents():
    assert all(ref.startswith("#") for ref in _refs(META))   # nothing to download
    doc = schema.describe(Typed)
    for broken in ({**doc, "openrpc": "9.9.9"}, {**doc, "methods": [{"name": "m"}]},
                   {**doc, "methods": [{**doc["methods"][0], "idempotent": True}]}):
        assert list(VALIDATOR.iter_errors(broken))


# ---- real nodes, a real gateway, the CLI ------------------------------------------------------

def test_a_node_answers_rpc_discover_over_msgpack_and_http(serve_node, make_client):
    node = serve_node("tests.schema_services")
    with RawConnection(node.address) as conn:
        conn.send({**DISCOVER, "params": []})
        frames, _ = conn.read_frames(want=1, timeout=10)
    doc = valid(frames[0]["result"])
    status, answer = post_json(node.address, DISCOVER, timeout=10)
    assert status == 200 and answer["result"] == doc
    found = methods(doc)
    assert set(found) == {"Inventory.count", "Inventory.add"}
    count, add = found["Inventory.count"], found["Inventory.add"]
    assert count["x-idempotent"] is True and add["x-idempotent"] is False
    assert count["paramStructure"] == "by-name"
    assert count["params"][1] == {"name": "default", "required": False,
                                  "description": "what to answer for an unknown item",
                                  "schema": {"type": ["integer", "null"], "default": None}}
    assert add["params"][0]["schema"] == {
        "type": "array", "items": {"type": "object", "title": "Item", "required": ["name"],
                                   "properties": {"name": {"type": "string"},
                                                  "quantity": {"type": "integer"}}}}
    assert add["params"][1]["schema"] == {"type": "object", "default": {},
                                          "additionalProperties": {"type": "integer"}}
    assert add["result"]["description"] == "the names now in stock"
    # the methods it describes work as described; the registry's method table knows no rpc.*
    client = make_client(timeout=10)
    assert client.call("Inventory.add", {"items": [{"name": "nut", "quantity": 3}]}) == ["nut"]
    assert client.call("Inventory.count", {"name": "nut"}) == 3
    assert set(client.discovery.nodes("Inventory")[0].meta["methods"]) == {"count", "add"}
    assert valid(schema.fetch(client, "Inventory", 10)) == doc


def _openrpc(gateway) -> dict:
    status, headers, body = gateway.request("GET", "/openrpc.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    return valid(json.loads(body))


def _discover_calls(*nodes) -> float:
    return sum(sample(scrape_metrics(n.address), "framework_calls_total", service="rpc",
                      method="discover", outcome="ok") or 0 for n in nodes)


def test_the_gateway_serves_one_document_of_every_live_service(serve_node, serve_gateway):
    hello = serve_node("demo_hello.service")
    gateway = serve_gateway()
    assert set(methods(_openrpc(gateway))) == {"HelloService.Hello"}
    inventory = serve_node("tests.schema_services")
    doc = wait_until(lambda: (lambda d: d if "Inventory.count" in methods(d) else None)(
        _openrpc(gateway)), timeout=10, interval=0.1, message="Inventory in /openrpc.json")
    assert set(methods(doc)) == {"HelloService.Hello", "Inventory.count", "Inventory.add"}
    status, answer = gateway.post(DISCOVER)
    assert status == 200 and valid(answer["result"]) == doc
    # each service's part was asked of its node once, and is kept while its nodes stay the same
    assert _discover_calls(hello) == 1 and _discover_calls(inventory) == 1
    # a node joining changes Inventory's nodes: its part is asked again, HelloService's is not
    second = serve_node("tests.schema_services")
    wait_until(lambda: _openrpc(gateway) and _discover_calls(inventory, second) == 2,
               timeout=10, interval=0.1, message="Inventory asked again")
    assert _discover_calls(hello) == 1
    assert http_request(gateway.address, "POST", "/openrpc.json", b"{}")[0] == 405


def describe(*runs: Tuple[str, ...]) -> List[subprocess.CompletedProcess]:
    """``python -m framework describe *args`` for each of ``runs``, run side by side."""
    procs = [subprocess.Popen([sys.executable, "-m", "framework", "describe", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for args in runs]
    results = []
    for proc, args in zip(procs, runs):
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def test_describe_prints_a_services_document(serve_node, etcd):
    serve_node("demo_hello.service")
    one, everything, missing, offline = describe(
        ("HelloService", "--etcd", etcd.endpoint), ("--etcd", etcd.endpoint),
        ("Nope", "--etcd", etcd.endpoint, "--timeout", "2"), ("--module", "tests.schema_services"))
    assert one.returncode == 0, one.stderr
    doc = valid(json.loads(one.stdout))
    assert doc["info"]["title"] == "HelloService"
    assert methods(doc)["HelloService.Hello"]["x-idempotent"] is True
    # without SERVICE: one document of every live service
    assert everything.returncode == 0, everything.stderr
    assert set(methods(valid(json.loads(everything.stdout)))) == {"HelloService.Hello"}
    assert missing.returncode == 3 and missing.stdout == ""
    assert missing.stderr.startswith("error: describe: ServiceUnavailable: no live node of Nope")
    # --module: from the code, no etcd and no node
    assert offline.returncode == 0, offline.stderr
    assert set(methods(valid(json.loads(offline.stdout)))) == {"Inventory.count", "Inventory.add"}
