"""Property-based fuzzing (hypothesis) of the pure layers a hostile peer reaches first: the frame
decoder, the msgpack body decoder, request validation and the dispatcher.

Properties: nothing but the documented errors ever escapes; any chunking of a byte stream gives
the same frames; the decoder never buffers more than one frame; every request gets a well-formed
JSON-RPC response; a method string only ever selects a public method of the table.
"""
import string
import struct
import time

import msgpack
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import framework
from framework import protocol
from framework.dispatch import Dispatcher
from framework.errors import InvalidRequest, ParseError, ProtocolError
from framework.testing import frame

FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

REACHED = []


@framework.service
class Fuzzed(framework.Service):
    token = "class attribute, not a method"

    def Add(self, a, b=0):
        return a + b

    def Echo(self, *args, **kwargs):
        return [list(args), kwargs]

    @framework.idempotent
    def Ping(self):
        return "pong"

    def _secret(self):
        REACHED.append("_secret")
        return "secret"

    def __call__(self, *args):
        REACHED.append("__call__")

    @staticmethod
    def helper():
        REACHED.append("helper")


PUBLIC = {"Fuzzed.Add", "Fuzzed.Echo", "Fuzzed.Ping"}

scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.integers(-2**63, 2**64 - 1),
                                      inner, max_size=4),
                      max_leaves=20)
attr_names = st.sampled_from(sorted(set(dir(Fuzzed)) | set(dir(Fuzzed.Add))
                                    | {"Add", "Echo", "Ping", "", "Fuzzed"}))
method_names = (st.text(max_size=30)
                | st.builds(lambda *parts: ".".join(parts), st.sampled_from(["Fuzzed", "fuzzed", ""]),
                            attr_names)
                | st.builds(lambda a, b: f"Fuzzed.{a}.{b}", attr_names, attr_names))
requests = st.fixed_dictionaries(
    {},
    optional={"jsonrpc": st.sampled_from(["2.0", "1.0", 2.0]) | values,
              "id": st.integers(-5, 10**12) | st.text(max_size=5) | values,
              "method": st.sampled_from(sorted(PUBLIC)) | method_names | values,
              "params": st.lists(values, max_size=3) | st.dictionaries(st.text(max_size=3), values,
                                                                        max_size=3) | values,
              "meta": st.fixed_dictionaries({}, optional={"timeout_ms": values,
                                                          "token": values}) | values})


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.data())
def test_any_chunking_of_a_stream_yields_the_same_frames(bodies, data):
    stream = b"".join(frame(body) for body in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = protocol.FrameReader(max_frame=300)
    got, last = [], 0
    for cut in cuts + [len(stream)]:
        got += reader.feed(stream[last:cut])
        last = cut
    assert got == bodies
    assert reader.buffered == 0


@FUZZ
@given(st.lists(st.binary(max_size=600), max_size=10))
def test_frame_reader_on_garbage_only_raises_protocol_errors_and_stays_bounded(chunks):
    reader = protocol.FrameReader(max_frame=256)
    for chunk in chunks:
        try:
            bodies = reader.feed(chunk)
        except ProtocolError:
            assert reader.buffered == 0   # nothing kept after a refused header
            return
        assert all(1 <= len(b) <= 256 for b in bodies)
        assert reader.buffered < 256 + 4


@FUZZ
@given(st.binary(max_size=400))
def test_unpack_body_raises_only_parse_error(raw):
    try:
        protocol.unpack_body(raw)
    except ParseError:
        pass


@FUZZ
@given(values)
def test_unpack_body_round_trips_plain_values(value):
    body = msgpack.packb(value, use_bin_type=True)
    decoded = protocol.unpack_body(body)
    assert msgpack.packb(decoded, use_bin_type=True) == body


def _ext(code: int, data: bytes) -> bytes:
    """A msgpack ext value written by hand: the library refuses to pack reserved (negative) codes."""
    fixed = {1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8}
    head = bytes([fixed[len(data)]]) if len(data) in fixed else b"\xc7" + bytes([len(data)])
    return head + struct.pack("b", code) + data


@FUZZ
@given(st.integers(-128, 127), st.binary(max_size=20) | st.sampled_from([b"\0" * 4, b"\0" * 8,
                                                                          b"\0" * 12]),
       st.lists(values, max_size=2))
def test_every_ext_type_is_refused_wherever_it_sits(code, data, siblings):
    template = msgpack.packb({"jsonrpc": "2.0", "params": siblings + [0]}, use_bin_type=True)
    assert template.endswith(b"\x00")
    body = template[:-1] + _ext(code, data)   # the ext replaces the last element, the 0
    try:
        protocol.unpack_body(body)
    except ParseError:
        return
    raise AssertionError(f"ext type {code} was accepted")


@FUZZ
@given(requests | values)
def test_parse_request_raises_only_invalid_request(obj):
    try:
        req = protocol.parse_request(obj)
    except InvalidRequest:
        return
    assert isinstance(req.method, str) and isinstance(req.params, (list, dict))
    assert isinstance(req.meta, dict)


def _check_response(response, obj):
    assert isinstance(response, dict) and response["jsonrpc"] == "2.0"
    assert ("result" in response) != ("error" in response)
    if "error" in response:
        error = response["error"]
        assert isinstance(error["code"], int) and isinstance(error["message"], str)
    protocol.pack(response)  # a response must always be encodable


@FUZZ
@given(requests | values)
def test_dispatcher_answers_everything_and_never_leaks_private_attributes(obj):
    dispatcher = Dispatcher([Fuzzed()])
    response = dispatcher.handle(obj, received=time.monotonic())   # meta.timeout_ms is checked
    if response is None:   # only a valid notification goes unanswered
        assert isinstance(obj, dict) and "id" not in obj and obj.get("jsonrpc") == "2.0"
    else:
        _check_response(response, obj)
        method = obj.get("method") if isinstance(obj, dict) else None
        if "result" in response:
            assert method in PUBLIC
    assert REACHED == []


@FUZZ
@given(method_names, st.lists(values, max_size=2))
def test_only_public_methods_are_found(method, params):
    dispatcher = Dispatcher([Fuzzed()])
    response = dispatcher.handle({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    if method not in PUBLIC:
        assert response["error"]["code"] == -32601, (method, response)
    assert REACHED == []


@FUZZ
@given(requests, st.one_of(st.none(), st.text(alphabet=string.printable, max_size=12), values))
def test_a_token_protected_dispatcher_runs_nothing_without_the_token(obj, token):
    assume(token != "the-token")
    calls = []

    @framework.service("Guarded")
    class Guarded(framework.Service):
        def Run(self, *args, **kwargs):
            calls.append(1)

    dispatcher = Dispatcher([Guarded()], token="the-token")
    obj = dict(obj, method="Guarded.Run")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    obj["meta"] = dict(meta, token=token)
    response = dispatcher.handle(obj)
    assert calls == []
    if response is not None and obj.get("jsonrpc") == "2.0" and "error" in response:
        assert response["error"]["code"] in (-32004, -32600, -32602)


@FUZZ
@given(st.lists(st.binary(max_size=64) | st.builds(protocol.pack, requests), max_size=6))
def test_the_whole_receive_path_on_mixed_frames_and_garbage(chunks):
    """bytes -> frames -> msgpack -> dispatch -> encoded response: only the documented errors."""
    reader = protocol.FrameReader(max_frame=4096)
    dispatcher = Dispatcher([Fuzzed()])
    for chunk in chunks:
        try:
            bodies = reader.feed(chunk)
        except ProtocolError:
            return       # the server answers this with an error frame and closes
        for body in bodies:
            try:
                obj = protocol.unpack_body(body)
            except ParseError:
                return   # likewise
            response = dispatcher.handle(obj)
            if response is not None:
                _check_response(response, obj)
    assert REACHED == []


comparable = st.recursive(   # like ``values`` without NaN, which never equals itself
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)


@FUZZ
@given(rid=st.integers(0, 2**64 - 1) | st.text(max_size=20), method=st.text(max_size=40),
       params=(st.lists(comparable, max_size=4)
               | st.dictionaries(st.text(max_size=8), comparable, max_size=4)),
       timeout_ms=st.none() | st.integers(0, 2**32), token=st.none() | st.text(max_size=20),
       one_thread=st.booleans())
def test_request_packer_frames_decode_to_the_documented_request(rid, method, params, timeout_ms,
                                                                 token, one_thread):
    # the client's cached encoding must be indistinguishable from packing protocol.request()
    meta = None if token is None else {"token": token, "metadata": {"x-user": token}}
    frame = protocol.request_packer(one_thread)(rid, method, params, timeout_ms, meta)
    [body] = protocol.FrameReader().feed(frame)
    expected = protocol.request(rid, method, params, timeout_ms, meta)
    assert len(body) == len(frame) - 4
    assert msgpack.unpackb(body, raw=False, strict_map_key=False) == expected
