"""The WSGI side of an HTTP request: the environ an app sees, its answer, and that answer's head.

:mod:`framework.httpserver` parses a request and calls these. The environ has what PEP 3333 asks,
as gevent's pywsgi fills it (``tests/test_httpserver.py`` compares the two): repeated headers
joined with ``,``, names with ``_`` left out (they could pass for ``-`` ones), ``PATH_INFO``
percent-decoded as latin-1. An app answers through its return value; ``write()`` is not offered.
"""
from __future__ import annotations

import io
import sys
import time
from email.utils import formatdate
from typing import Any, Callable, Dict, List, Tuple
from urllib.parse import unquote_to_bytes

#: statuses whose answers carry no body
NO_BODY = (204, 304)

#: header name -> its environ key ("": left out); names come from peers, so it is bounded
_KEYS: Dict[bytes, str] = {}
_date_cache: List[Any] = [-1, b""]


def base_environ(sock: Any, peer: Any) -> dict:
    """The items every request on this connection shares."""
    try:
        name = sock.getsockname()
    except OSError:
        name = ("", "")
    host, port = (name[0], name[1]) if isinstance(name, tuple) else (name, "")
    return {"GATEWAY_INTERFACE": "CGI/1.1", "SCRIPT_NAME": "", "SERVER_NAME": str(host),
            "SERVER_PORT": str(port), "REMOTE_ADDR": str(peer[0]) if peer else "",
            "REMOTE_PORT": str(peer[1]) if peer and len(peer) > 1 else "",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False}


def environ(base: dict, method: bytes, version: str, url: bytes,
            headers: List[Tuple[bytes, bytes]], body: List[bytes]) -> dict:
    """One request's environ: ``base`` plus its request line, headers and body."""
    env = base.copy()
    path, _, query = url.partition(b"?")
    env["REQUEST_METHOD"] = method.decode("latin-1")
    env["PATH_INFO"] = (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
    env["QUERY_STRING"] = query.decode("latin-1")
    env["SERVER_PROTOCOL"] = "HTTP/" + version
    keys = _KEYS
    for name, value in headers:
        key = keys.get(name)
        if key is None:
            key = _key(name)
        if key:
            value = value.decode("latin-1").strip()
            env[key] = env[key] + "," + value if key in env else value
    env["wsgi.input"] = io.BytesIO(body[0] if len(body) == 1 else b"".join(body))
    return env


def _key(name: bytes) -> str:
    key = name.decode("latin-1").upper().replace("-", "_")
    if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        key = "" if b"_" in name else "HTTP_" + key
    if len(_KEYS) >= 1024:
        _KEYS.clear()
    _KEYS[name] = key
    return key


def run(app: Callable, env: dict) -> Tuple[str, List[Tuple[str, str]], bytes]:
    """Call ``app``: its status, headers and whole body. Raises what the app raised."""
    answer: List[Any] = []

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None):
        answer[:] = [status, headers]
        return _no_write

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return answer[0], answer[1], body


def _no_write(data: bytes) -> None:
    raise NotImplementedError("this server takes the answer from the app's return value only")


def head(status: str, headers: List[Tuple[str, str]], length: int, keep: bool,
         version: str) -> Tuple[bytearray, bool]:
    """The status line and header block of an answer, and whether the connection stays open."""
    out = bytearray(b"HTTP/1.1 %s\r\n" % status.encode("latin-1"))
    has_length = False
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length":
            has_length = True
        elif lower == "connection" and value.lower() == "close":
            keep = False
        out += b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
    if not has_length and int(status[:3]) not in NO_BODY:
        out += b"Content-Length: %d\r\n" % length
    if not keep:
        out += b"Connection: close\r\n"
    elif version == "1.0":
        out += b"Connection: keep-alive\r\n"
    out += date_line()
    out += b"\r\n"
    return out, keep


def date_line() -> bytes:
    """The ``Date`` header line, formatted once a second."""
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[:] = [now, b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()]
    return _date_cache[1]
