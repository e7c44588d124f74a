"""Wire protocol: JSON-RPC 2.0 objects <-> msgpack frames on a TCP stream.

Frame layout (all integers big-endian)::

    +--------+--------+--------+--------+=============================+
    |  body length N (uint32, bytes)    |  body: one msgpack map      |
    +--------+--------+--------+--------+=============================+
      byte 0   byte 1   byte 2   byte 3    bytes 4 .. 4+N-1

* ``N`` counts only the body. ``N`` must be at least 1 and at most ``max_frame`` (default
  :data:`MAX_FRAME` = 8 MiB). A larger declared length is answered with a -32600 error and the
  connection is closed before the body is read, so a peer cannot make a node buffer it.
* The body is a msgpack map (msgpack spec 2.0, strings as UTF-8 ``str``, binary as ``bin``). Ext types
  are refused (-32700). Nesting deeper than the decoder's stack (1024) is refused (-32700).
* A request body is a JSON-RPC 2.0 request object::

      {"jsonrpc": "2.0", "id": 7, "method": "HelloService.Hello", "params": ["x"],
       "meta": {"timeout_ms": 4999}}

  ``id`` is an int or str (absent for a notification, which gets no answer); ``params`` is an array
  (positional) or a map (named) and may be absent; ``meta`` is this framework's optional extension map:
  ``timeout_ms`` (the caller's remaining deadline; a node skips work whose deadline has passed),
  ``token`` (shared-token auth) and ``metadata`` (a map of strings: the caller's metadata and the
  W3C trace context, see :mod:`framework.calls`). Unknown ``meta`` keys are ignored.
* A response body is ``{"jsonrpc": "2.0", "id": <same id>, "result": ...}`` or
  ``{"jsonrpc": "2.0", "id": <same id or nil>, "error": {"code": int, "message": str, "data": any}}``.
* One connection carries many requests at once. Responses come back in completion order, not request
  order; the client matches them by ``id``. A sender may put many frames in one TCP write.
"""
from __future__ import annotations

import functools
import struct
from typing import Any, Callable, List, NamedTuple, Optional, Union

import msgpack

from .errors import FrameTooLarge, InvalidRequest, ParseError, error_object

MAX_FRAME = 8 * 1024 * 1024

# Control frames (docs/protocol.md): a node answers PING from its connection reader, without a
# handler, so a missing answer means the node is stalled; GOAWAY tells a client the node is draining.
PING = "$ping"
GOAWAY = "$goaway"
_HEADER = struct.Struct(">I")
_NO_ID = object()


def _no_ext(code, data):
    raise ValueError(f"msgpack ext type {code} is not allowed")


def pack(obj: Any) -> bytes:
    """One frame: header + msgpack body."""
    body = msgpack.packb(obj, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


PING_FRAME = pack({"jsonrpc": "2.0", "id": 0, "method": PING})
PONG_FRAME = pack({"jsonrpc": "2.0", "id": 0, "result": "pong"})
GOAWAY_FRAME = pack({"jsonrpc": "2.0", "method": GOAWAY, "params": []})


def frame_packer() -> Callable[[Any], bytes]:
    """A :func:`pack` that reuses one ``msgpack.Packer`` (``packb`` builds one per call). For one
    thread of control only - a gevent hub's greenlets - since the Packer has a single buffer."""
    packb = msgpack.Packer(use_bin_type=True).pack
    header = _HEADER.pack

    def pack_frame(obj: Any) -> bytes:
        body = packb(obj)
        return header(len(body)) + body
    return pack_frame


def request_packer(one_thread: bool = True) -> Callable[..., bytes]:
    """``pack_request(rid, method, params, timeout_ms=None, meta=None)`` -> the frame of
    :func:`request`'s object, built from a cached encoding of its constant keys and of the method
    name, so a call packs only its id, params and meta (the saving: docs/performance.md).
    ``meta``: the request's other ``meta`` entries (``token``, ``metadata``), or None.
    ``one_thread``: reuse one ``msgpack.Packer`` (greenlets of one hub); False for callers on
    several OS threads."""
    packb = (msgpack.Packer(use_bin_type=True).pack if one_thread
             else functools.partial(msgpack.packb, use_bin_type=True))
    header = _HEADER.pack
    heads: dict = {}

    def pack_request(rid: Any, method: str, params: Union[list, dict],
                     timeout_ms: Optional[int] = None, meta: Optional[dict] = None) -> bytes:
        head = heads.get(method)
        if head is None:
            if len(heads) >= 4096:  # method names come from callers: bound the cache
                heads.clear()
            head = heads[method] = b"".join(map(packb, ("jsonrpc", "2.0", "method", method, "id")))
        if meta is None:
            if timeout_ms is None:
                body = b"".join((b"\x84", head, packb(rid), b"\xa6params", packb(params)))
            else:
                body = b"".join((b"\x85", head, packb(rid), b"\xa6params", packb(params),
                                 b"\xa4meta\x81\xaatimeout_ms", packb(timeout_ms)))
        else:
            if timeout_ms is not None:
                meta = {**meta, "timeout_ms": timeout_ms}
            body = b"".join((b"\x85", head, packb(rid), b"\xa6params", packb(params),
                             b"\xa4meta", packb(meta)))
        return header(len(body)) + body
    return pack_request


# msgpack decodes ext type -1 (timestamp) itself, without calling ext_hook. Its three encodings
# start with these bytes; when one occurs (or a string merely contains them) the body is decoded
# again with hooks that refuse Timestamp values, so the common case pays one substring search.
_TIMESTAMP_MARKERS = (b"\xd6\xff", b"\xd7\xff", b"\xc7\x0c\xff")


def _no_timestamp_list(items: list) -> list:
    for item in items:
        if type(item) is msgpack.Timestamp:
            raise ValueError("msgpack ext type -1 (timestamp) is not allowed")
    return items


def _no_timestamp_map(pairs: list) -> dict:
    for key, value in pairs:
        if type(key) is msgpack.Timestamp or type(value) is msgpack.Timestamp:
            raise ValueError("msgpack ext type -1 (timestamp) is not allowed")
    return dict(pairs)


def unpack_unmarked(body: bytes) -> Any:
    """:func:`unpack_body` for a body known to hold no timestamp marker (see
    :attr:`FrameReader.marked`): the marker search is done once per read instead of per frame."""
    try:
        return msgpack.unpackb(body, raw=False, ext_hook=_no_ext, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ParseError(f"invalid msgpack body: {exc}") from None


def unpack_body(body: bytes) -> Any:
    try:
        obj = msgpack.unpackb(body, raw=False, ext_hook=_no_ext, strict_map_key=False)
        # three substring tests, no generator: this runs for every frame on both sides
        if b"\xd6\xff" in body or b"\xd7\xff" in body or b"\xc7\x0c\xff" in body:
            if type(obj) is msgpack.Timestamp:
                raise ValueError("msgpack ext type -1 (timestamp) is not allowed")
            msgpack.unpackb(body, raw=False, ext_hook=_no_ext, strict_map_key=False,
                            list_hook=_no_timestamp_list, object_pairs_hook=_no_timestamp_map)
        return obj
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ParseError(f"invalid msgpack body: {exc}") from None


class FrameReader:
    """Splits a byte stream into frame bodies. Feed it whatever ``recv`` returned.

    After each :meth:`feed`, :attr:`marked` is False when none of the returned bodies can hold a
    msgpack timestamp, so they may be decoded with :func:`unpack_unmarked`."""

    __slots__ = ("max_frame", "_buf", "marked")

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self.marked = True

    def feed(self, data: bytes) -> List[bytes]:
        buf = self._buf
        if buf:
            buf += data
            data = buf
        bodies = []
        pos, end = 0, len(data)
        while end - pos >= 4:
            (n,) = _HEADER.unpack_from(data, pos)
            if n == 0 or n > self.max_frame:
                del buf[:]
                raise FrameTooLarge(f"frame length {n} outside 1..{self.max_frame}")
            if end - pos - 4 < n:
                break
            bodies.append(data[pos + 4:pos + 4 + n])
            pos += 4 + n
        # one search over every complete frame read now (headers included: a false alarm there
        # only costs the careful decode)
        self.marked = pos > 0 and (data.find(b"\xd6\xff", 0, pos) >= 0 or
                                   data.find(b"\xd7\xff", 0, pos) >= 0 or
                                   data.find(b"\xc7\x0c\xff", 0, pos) >= 0)
        if data is buf:
            if pos:
                del buf[:pos]
            if bodies:
                bodies = [bytes(b) for b in bodies]
        elif pos < end:
            buf += data[pos:]
        return bodies

    @property
    def buffered(self) -> int:
        return len(self._buf)


class Request(NamedTuple):
    id: Any                 # _NO_ID for a notification
    method: str
    params: Union[list, dict]
    meta: dict

    @property
    def is_notification(self) -> bool:
        return self.id is _NO_ID


def parse_request(obj: Any) -> Request:
    """Validate one decoded JSON-RPC 2.0 request object. Raises InvalidRequest (with the id, where
    one could be read, in ``.data['id']``)."""
    if not isinstance(obj, dict):
        raise InvalidRequest("Invalid Request: not an object")
    rid = obj.get("id", _NO_ID)
    if rid is not _NO_ID and (isinstance(rid, bool) or
                              not (rid is None or isinstance(rid, (str, int, float)))):
        raise _invalid("id must be a string, number or null", None)
    if obj.get("jsonrpc") != "2.0":
        raise _invalid('"jsonrpc" must be "2.0"', rid)
    method = obj.get("method")
    if not isinstance(method, str):
        raise _invalid('"method" must be a string', rid)
    params = obj.get("params", ())
    if params == ():
        params = []
    elif not isinstance(params, (list, dict)):
        raise _invalid('"params" must be an array or an object', rid)
    meta = obj.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    return Request(rid, method, params, meta)


def _invalid(message: str, rid: Any) -> InvalidRequest:
    exc = InvalidRequest("Invalid Request: " + message)
    exc.request_id = None if rid is _NO_ID else rid
    return exc


def response(rid: Any, result: Any) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def error_response(rid: Any, exc: BaseException, typed: bool = False) -> dict:
    """The response that answers request ``rid`` with ``exc`` (see :func:`errors.error_object`)."""
    return {"jsonrpc": "2.0", "id": None if rid is _NO_ID else rid,
            "error": error_object(exc, typed)}


def request(rid: Any, method: str, params: Union[list, dict], timeout_ms: Optional[int] = None,
            meta: Optional[dict] = None) -> dict:
    obj = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
    if timeout_ms is not None or meta is not None:
        obj["meta"] = dict(meta or {})
        if timeout_ms is not None:
            obj["meta"]["timeout_ms"] = timeout_ms
    return obj
