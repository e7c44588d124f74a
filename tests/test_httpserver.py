"""framework.httpserver: the HTTP/1.1 server of the gateway and of every node's HTTP port.

Real server processes (tests/http_app.py) and real sockets. The app reports the environ it saw,
so the first tests check it against gevent's pywsgi fed the same bytes; the others drive each
bound with a peer that misbehaves, and check the answer and that the connection is let go.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.testing import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = b'{"jsonrpc":"2.0","id":1,"method":"HelloService.Hello","params":["x"]}'


class AppServer:
    def __init__(self, kind: str, *numbers: float):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.http_app", kind,
                                      *map(str, numbers)], cwd=ROOT, stdout=subprocess.PIPE,
                                     text=True, env=dict(os.environ, PYTHONPATH=ROOT))
        line = self.proc.stdout.readline()
        assert line.startswith("ready "), line
        self.port = int(line.split()[1])

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def ours():
    server = AppServer("ours", 0.5, 0.5, 0.5, 4096)
    yield server
    server.close()


@pytest.fixture(scope="module")
def pywsgi():
    server = AppServer("pywsgi")
    yield server
    server.close()


def read_answer(sock, buffer: bytearray, head_only: bool = False):
    """One answer from ``sock`` -> (status, headers dict, body); ``buffer`` keeps what follows."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise EOFError(bytes(buffer))
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", 0))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            raise EOFError(rest)
        rest += data
    buffer[:] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def exchange(server, raw: bytes, answers: int, head_only: bool = False):
    with server.connect() as sock:
        sock.sendall(raw)
        buffer = bytearray()
        return [read_answer(sock, buffer, head_only) for _ in range(answers)]


def closed(sock, within: float = 2.0) -> bool:
    """True when the peer closed ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return False
    except ConnectionResetError:
        pass
    return True


def post(body: bytes = BODY, extra: bytes = b"", path: bytes = b"/") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (path, extra, len(body), body))


def test_keep_alive_and_pipelined_requests_see_what_pywsgi_shows_its_app(ours, pywsgi):
    raw = (post(extra=b"traceparent: 00-abc-def-01\r\nX-Twice: a\r\nX-Twice: b\r\nX_Under: u\r\n")
           + post(path=b"/a%20b/c?q=1&r=%41") + b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    mine = exchange(ours, raw, 3)
    theirs = exchange(pywsgi, raw, 3)
    seen = [json.loads(body) for _, _, body in mine]
    assert seen == [json.loads(body) for _, _, body in theirs]
    assert [status for status, _, _ in mine] == [200, 200, 200]
    assert seen[0]["HTTP_X_TWICE"] == "a,b" and "HTTP_X_UNDER" not in seen[0]
    assert seen[0]["HTTP_TRACEPARENT"] == "00-abc-def-01" and seen[0]["body_length"] == len(BODY)
    assert seen[1]["PATH_INFO"] == "/a b/c" and seen[1]["QUERY_STRING"] == "q=1&r=%41"
    assert seen[2]["REQUEST_METHOD"] == "GET" and "date" in mine[0][1]


NAMES = st.text(st.sampled_from("abcxyzABC-0123"), min_size=1, max_size=12).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "connection", "expect",
                                "upgrade", "host"))
VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=20)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(headers=st.lists(st.tuples(NAMES, VALUES), max_size=8))
def test_any_plain_header_block_gives_the_environ_pywsgi_gives(ours, pywsgi, headers):
    extra = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in headers)
    raw = post(extra=extra)
    assert json.loads(exchange(ours, raw, 1)[0][2]) == json.loads(exchange(pywsgi, raw, 1)[0][2])


def test_chunked_bodies_expect_continue_head_and_http_1_0(ours):
    chunked = (b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    (status, _, body), = exchange(ours, chunked, 1)
    assert status == 200 and json.loads(body)["body_length"] == 11

    with ours.connect() as sock:   # the 100 comes before the body is sent
        sock.sendall(b"POST / HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(BODY))
        buffer = bytearray()
        assert read_answer(sock, buffer)[0] == 100
        sock.sendall(BODY)
        status, _, body = read_answer(sock, buffer)
        assert status == 200 and json.loads(body)["body_length"] == len(BODY)

    (status, headers, body), = exchange(ours, b"HEAD /x HTTP/1.1\r\nHost: gw\r\n\r\n", 1, True)
    assert status == 200 and int(headers["content-length"]) > 0 and body == b""

    with ours.connect() as sock:   # HTTP/1.0 closes unless asked to keep the connection
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        status, headers, _ = read_answer(sock, bytearray())
        assert status == 200 and headers["connection"] == "close" and closed(sock)
    with ours.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        buffer = bytearray()
        for _ in range(2):
            status, headers, _ = read_answer(sock, buffer)
            assert status == 200 and headers["connection"] == "keep-alive"
    with ours.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_answer(sock, bytearray())
        assert headers["connection"] == "close" and closed(sock)


def test_a_body_over_the_limit_is_answered_before_it_is_read(ours):
    # the app is called at once (its 413 comes from framework.jsonrpc_http; this app reports what
    # it got); the server never reads the 1 MB the head announces, and closes
    with ours.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 1048576\r\n\r\n")
        status, headers, body = read_answer(sock, bytearray())
        assert status == 200 and json.loads(body)["body_length"] == 0
        assert headers["connection"] == "close" and closed(sock)
    with ours.connect() as sock:   # chunked: it stops at the limit, not at the end
        sock.sendall(b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n" + b"10\r\n" + b"y" * 16 + b"\r\n")
        status, headers, body = read_answer(sock, bytearray())
        assert json.loads(body)["body_length"] == 4096 + 16
        assert headers["connection"] == "close" and closed(sock)


def test_bad_heads_get_a_clear_status_and_the_connection_closes(ours):
    for raw, status in ((b"NOT HTTP AT ALL\r\n\r\n", 400),
                        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
                        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n", 431),
                        (b"GET /boom HTTP/1.1\r\n\r\n", 500)):
        with ours.connect() as sock:
            sock.sendall(raw)
            got, headers, _ = read_answer(sock, bytearray())
            assert (got, headers["connection"]) == (status, "close") and closed(sock)


def test_slow_idle_and_unread_peers_are_let_go_within_their_bounds(ours):
    # request_timeout, idle_timeout and write_timeout are 0.5 s here
    with ours.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nabc")
        status, _, _ = read_answer(sock, bytearray())
        assert status == 408 and closed(sock) and time.monotonic() - started < 1.5
    with ours.connect() as sock:
        sock.sendall(post())
        read_answer(sock, bytearray())
        started = time.monotonic()
        assert closed(sock, within=3.0) and 0.4 < time.monotonic() - started < 1.5
    with ours.connect() as stalled, ours.connect() as probe:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")   # 8 MB it never reads
        buffer = bytearray()

        def serving() -> int:
            probe.sendall(b"GET /open HTTP/1.1\r\nHost: gw\r\n\r\n")
            return json.loads(read_answer(probe, buffer)[2])["open"]
        wait_until(lambda: serving() == 2, timeout=2.0)   # the writer is stuck on the big answer
        wait_until(lambda: serving() == 1, timeout=2.0)   # and given up after write_timeout
