"""Type hints and docstrings -> JSON Schema and text: the pure step under :mod:`framework.schema`.

:func:`schema_of` maps a hint to a JSON Schema (draft-07, as OpenRPC documents carry them):
builtin scalars, containers (``list[str]``, ``dict[str, int]``, ``tuple[int, str]``, sets),
``Optional``/``Union``/``X | None``, ``Literal``, enums, dataclasses, TypedDicts and NamedTuples;
anything else, like no hint at all, is ``{}`` (any value). :func:`type_hints` evaluates hints and
never fails: a hint it cannot evaluate is left out. :func:`parse_docstring` splits a docstring into
a summary, a description and the texts of the parameters and of the return value.
"""
from __future__ import annotations

import collections.abc as abc
import dataclasses
import enum
import inspect
import json
import re
import sys
import types
import typing
from typing import Any, Dict, List, Optional, Tuple

# ---- type hints -> JSON Schema -------------------------------------------------------------------

_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
            list: "array", tuple: "array", dict: "object"}
_SETS = (set, frozenset, abc.Set, abc.MutableSet)
_ARRAYS = (list, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection) + _SETS
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)
_UNIONS = (typing.Union, getattr(types, "UnionType", typing.Union))   # X | Y since Python 3.10


def schema_of(hint: Any, _seen: Tuple[type, ...] = ()) -> dict:
    """The JSON Schema of a type hint: builtin scalars, containers (``list[str]``,
    ``dict[str, int]``, ``tuple[int, str]``, sets), ``Optional``/``Union``, ``Literal``, enums,
    dataclasses, TypedDicts and NamedTuples; ``{}`` (any value) for anything else."""
    if hint is None or hint is type(None):
        return {"type": "null"}
    if hint is bytes or hint is bytearray:   # msgpack ``bin``; JSON has no bytes
        return {"type": "string", "format": "binary"}
    if type(hint) is type and hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNIONS:
        return union([schema_of(a, _seen) for a in args])
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is getattr(typing, "Annotated", None):
        return schema_of(args[0], _seen)
    if origin is tuple:
        return _tuple([a for a in args], _seen)
    if origin in _ARRAYS:
        out: dict = {"type": "array"}
        if args:
            out["items"] = schema_of(args[0], _seen)
        if origin in _SETS:
            out["uniqueItems"] = True
        return out
    if origin in _MAPPINGS:
        return ({"type": "object", "additionalProperties": schema_of(args[1], _seen)}
                if len(args) == 2 else {"type": "object"})
    return _class(hint, _seen) if isinstance(hint, type) else {}


def union(schemas: List[dict]) -> dict:
    """The schema of a value valid under any of ``schemas``."""
    if any(not s for s in schemas):   # one member is anything: so is the union
        return {}
    if all(list(s) == ["type"] and isinstance(s["type"], str) for s in schemas):
        return {"type": [s["type"] for s in schemas]}   # the compact form: ["integer", "null"]
    return {"anyOf": schemas}


def nullable(schema: dict) -> dict:
    """``schema``, widened to take null too (itself when it already does)."""
    kinds = schema.get("type")
    if (not schema or kinds == "null" or (isinstance(kinds, list) and "null" in kinds)
            or {"type": "null"} in schema.get("anyOf", ())):
        return schema
    return union([schema, {"type": "null"}])


def _tuple(args: list, seen: Tuple[type, ...]) -> dict:
    if len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": schema_of(args[0], seen)}
    if args == [()]:   # tuple[()]: the empty tuple
        args = []
    return {"type": "array", "items": [schema_of(a, seen) for a in args],
            "minItems": len(args), "maxItems": len(args)}


def _class(cls: type, seen: Tuple[type, ...]) -> dict:
    """Enums, records (dataclass, TypedDict, NamedTuple) and subclasses of the builtin scalars."""
    if issubclass(cls, enum.Enum):
        return {"title": cls.__name__, "enum": [jsonable(m.value) for m in cls]}
    if cls in seen:   # a record that contains itself: named, not expanded again
        return {"title": cls.__name__}
    seen = seen + (cls,)
    hints = type_hints(cls)
    if dataclasses.is_dataclass(cls):
        fields = [(f.name, f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING) for f in dataclasses.fields(cls)]
        return _record(cls, hints, fields, seen)
    if issubclass(cls, dict) and hasattr(cls, "__total__"):   # a TypedDict
        required = getattr(cls, "__required_keys__", frozenset(hints))
        return _record(cls, hints, [(name, name in required) for name in hints], seen)
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):   # a NamedTuple: sent as an array
        return {"title": cls.__name__,
                **_tuple([hints.get(name, Any) for name in cls._fields], seen)}
    for base, name in _SCALARS.items():
        if base is not type(None) and issubclass(cls, base):
            return {"type": name}
    return {}


def _record(cls: type, hints: dict, fields: List[Tuple[str, bool]],
            seen: Tuple[type, ...]) -> dict:
    out: dict = {"type": "object", "title": cls.__name__,
                 "properties": {name: schema_of(hints.get(name, Any), seen)
                                for name, _ in fields}}
    required = [name for name, needed in fields if needed]
    if required:
        out["required"] = required
    return out


def type_hints(obj: Any) -> dict:
    """``obj``'s evaluated type hints (a function's or a class's). When one cannot be evaluated
    (a name that does not exist, ``X | Y`` before Python 3.10), the others are, one by one: a hint
    that fails costs its own type (``{}``), never the document."""
    try:
        return typing.get_type_hints(obj)
    except Exception:   # whatever evaluating the hints raised
        pass
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    namespace = getattr(obj, "__globals__", None) or (vars(module) if module else {})
    hints = {}
    for name, hint in (getattr(obj, "__annotations__", None) or {}).items():
        try:
            hints[name] = typing.get_type_hints(
                types.SimpleNamespace(__annotations__={name: hint}), namespace)[name]
        except Exception:   # this hint only
            continue
    return hints


NOT_JSON = object()


def jsonable(value: Any) -> Any:
    """``value`` as JSON has it (an enum member as its value), or ``NOT_JSON``."""
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return NOT_JSON


# ---- docstrings ----------------------------------------------------------------------------------

_FIELD = re.compile(r"^:(?:param|parameter|arg|argument|key|keyword)\s+(?:[^:]*\s)?\*{0,2}(\w+)\s*:"
                    r"\s*(.*)$")
_RETURNS_FIELD = re.compile(r"^:returns?\s*:\s*(.*)$")
_OTHER_FIELD = re.compile(r"^:(?:type|rtype|raises?|except|exception)\b[^:]*:")
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Returns|Return)\s*:\s*$")
_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: Optional[str]) -> Tuple[str, str, Dict[str, str], str]:
    """``(summary, description, {parameter: text}, returns text)`` of a docstring. The summary is
    its first paragraph and the description the paragraphs after it; parameters and the return
    value come from reST fields (``:param name: text``, ``:returns: text``) or Google sections
    (``Args:`` with ``name (type): text`` entries, ``Returns:``)."""
    prose: List[str] = []
    params: Dict[str, List[str]] = {}
    returns: List[str] = []
    current: Optional[List[str]] = None   # where the indented lines that follow go
    section, entry_indent = "", 0
    for line in inspect.cleandoc(doc or "").splitlines():
        text, indent = line.strip(), len(line) - len(line.lstrip())
        field, returned = _FIELD.match(text), _RETURNS_FIELD.match(text)
        heading = _SECTION.match(line)
        if field:
            current = params.setdefault(field.group(1), [field.group(2)])
        elif returned:
            current = returns
            returns.append(returned.group(1))
        elif _OTHER_FIELD.match(text):
            current = None
        elif heading:
            section, entry_indent = heading.group(1).lower(), 0
            current = returns if section.startswith("return") else None
        elif text and section and indent:
            entry = _ENTRY.match(text) if "return" not in section else None
            if entry and (not entry_indent or indent <= entry_indent):
                entry_indent = indent
                current = params.setdefault(entry.group(1), [entry.group(2)])
            elif current is not None:
                current.append(text)
        elif text and current is not None and indent and not section:
            current.append(text)
        else:
            section, current = "", None
            prose.append(line)
    paragraphs = [p.strip() for p in "\n".join(prose).strip().split("\n\n") if p.strip()]
    summary = " ".join(paragraphs[0].split()) if paragraphs else ""
    return (summary, "\n\n".join(paragraphs[1:]),
            {name: " ".join(" ".join(parts).split()) for name, parts in params.items()},
            " ".join(" ".join(returns).split()))
