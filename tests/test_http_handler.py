"""The shared pywsgi handler (framework.web.Handler) answers exactly as pywsgi's own handler does.

Its header splitting, its ``Date`` cache and its one write per answer are shortcuts, so each
scenario feeds the same bytes - one or more keep-alive requests - to both handlers and compares
what the application saw (the WSGI environ) and what went back on the wire (the ``Date`` lines
aside: the two runs may straddle a second). Pure logic: the stream is in memory, no socket.
"""
import io

from gevent.pywsgi import WSGIHandler, WSGIServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.web import Handler

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
#: environ items that are per-request objects, not values
OBJECTS = ("wsgi.input", "wsgi.errors")


class _Wire:
    """What the handler writes; the socket calls a handler makes."""

    def __init__(self):
        self.out = bytearray()

    def sendall(self, data):
        self.out += data

    def send(self, data):
        taken = min(len(data), 7)   # a short write: the handler must send the rest
        self.out += data[:taken]
        return taken

    def setsockopt(self, *args):
        pass

    def close(self):
        pass


def exchange(handler_class, raw: bytes):
    """Serve ``raw`` (requests back to back) -> (environs the app saw, bytes sent, Date aside)."""
    seen = []

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        seen.append({k: v for k, v in environ.items() if k not in OBJECTS})
        answer = b"got %d bytes" % len(body)
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(answer)))])
        return [answer]

    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    wire = _Wire()
    handler_class(wire, ("127.0.0.1", 40000), server,
                  rfile=io.BufferedReader(io.BytesIO(raw))).handle()
    lines = [line for line in bytes(wire.out).split(b"\r\n") if not line.startswith(b"Date: ")]
    return seen, b"\r\n".join(lines)


def assert_same(raw: bytes):
    ours, theirs = exchange(Handler, raw), exchange(WSGIHandler, raw)
    assert ours == theirs
    return ours


def test_plain_requests_keep_alive_and_see_every_header():
    body = b'{"jsonrpc":"2.0","id":1,"method":"HelloService.Hello","params":["x"]}'
    one = (b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
           b"traceparent: 00-abc-def-01\r\nX-Twice: a\r\nX-Twice: b\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    seen, sent = assert_same(one * 3)
    assert len(seen) == 3 and sent.count(b"HTTP/1.1 200 OK") == 3
    assert seen[0]["HTTP_TRACEPARENT"] == "00-abc-def-01" and seen[0]["HTTP_X_TWICE"] == "a,b"
    assert seen[0]["CONTENT_TYPE"] == "application/json"


def test_unusual_header_blocks_are_read_as_pywsgi_reads_them():
    for headers in (b"X-Folded: a\r\n  b\r\nHost: h\r\n",          # obsolete line folding
                    b"X-Bare: a\rb\r\nHost: h\r\n",                # a CR inside a value
                    b"X-Lf: a\nHost: h\n",                         # LF-only line ends
                    b"Not a header\r\nHost: h\r\n",                # a line with no colon
                    b"X_Under: dropped\r\nX-Sp:  \t padded \t\r\n",  # '_' names, padding
                    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                    b"Connection: close\r\n", b"Expect: 100-continue\r\nContent-Length: 2\r\n"):
        raw = b"POST /p?q=1 HTTP/1.1\r\n" + headers + b"\r\n"
        raw += b"2\r\nhi\r\n0\r\n\r\n" if b"chunked" in headers else b"hi"
        assert_same(raw + b"GET / HTTP/1.1\r\n\r\n")


def test_too_many_or_too_long_header_lines_are_refused_alike():
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    _, sent = assert_same(b"GET / HTTP/1.1\r\n" + many + b"\r\n")
    assert sent.startswith(b"HTTP/1.1 400")
    _, sent = assert_same(b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 70000 + b"\r\n\r\n")
    assert sent.startswith(b"HTTP/1.1 400")


header_text = st.text(alphabet="aZ09-_:; \t\r\n\x80\xff", max_size=12)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["Host", "X-A", "x-a", "X_B", "Content-Type",
                                           "Connection", "Transfer-Encoding", "Content-Length",
                                           " X-Lead", "X A", ""]), header_text),
                max_size=6),
       st.binary(max_size=8))
def test_any_header_block_gives_the_same_environ_and_answer(headers, body):
    lines = b"".join(f"{name}:{value}\r\n".encode("latin-1") for name, value in headers)
    assert_same(b"POST / HTTP/1.1\r\n" + lines + b"\r\n" + body + b"GET / HTTP/1.1\r\n\r\n")
