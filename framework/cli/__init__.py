"""Command line: ``python -m framework serve | gateway | call | ls | describe | watch | etcd``.

``serve`` and ``gateway`` monkey-patch the process with gevent first thing, the way gunicorn's gevent
worker does; the library itself never patches on import. ``call``, ``ls`` and ``watch`` are plain
threaded programs. Logs go to stderr (``--log-level``, ``--log-format text|json``); results go to
stdout, so ``call`` and ``ls --json`` compose with ``jq``.

Exit codes: 0 success; 1 the call or lookup failed with an answer (handler error, no such method,
no such service in ``ls``); 2 bad usage; 3 nothing answered (no live node, deadline passed, etcd
unreachable).

This module holds the entry point, the top-level parser and the logging set-up; each subcommand's
parser and command live together in :mod:`.serving` (serve, gateway, etcd) or :mod:`.querying`
(call, ls, watch) or :mod:`.describing` (describe), and what they share in :mod:`.shared`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import List, Optional

from .describing import cmd_describe, describe_parser
from .querying import call_parser, cmd_call, cmd_ls, cmd_watch, ls_parser, watch_parser
from .serving import (cmd_etcd, cmd_gateway, cmd_serve, etcd_parser, gateway_parser,
                      limit_options, rpc_security_options, serve_parser)
from .shared import (EXIT_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, FORMATTER, common_flags,
                     etcd_config)

__all__ = ["main", "build_parser", "JsonFormatter", "etcd_config", "rpc_security_options",
           "limit_options", "cmd_serve", "cmd_gateway", "cmd_etcd", "cmd_call", "cmd_ls",
           "cmd_watch", "cmd_describe", "EXIT_ERROR", "EXIT_USAGE", "EXIT_UNREACHABLE"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when there is a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage(), "pid": record.process}
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def _logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m framework", formatter_class=FORMATTER,
        description="JSON-RPC 2.0 microservices on etcd, msgpack and gevent.",
        epilog="examples:\n"
        "  python -m framework etcd &\n"
        "  python -m framework serve demo_hello.service --port 4000\n"
        "  python -m framework call HelloService.Hello world\n"
        "  python -m framework ls\n"
        "  python -m framework describe HelloService\n"
        "  python -m framework gateway --port 8080\n"
        "  curl -d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"HelloService.Hello\","
        "\"params\":[\"world\"]}' localhost:8080\n\n"
        "exit codes: 0 ok, 1 failed with an answer, 2 usage, 3 nothing answered")
    common_flags(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # the order here is the order of `--help`
    for add in (serve_parser, gateway_parser, call_parser, ls_parser, describe_parser, watch_parser,
                etcd_parser):
        add(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # what a pre-fork worker reruns
    level = args.log_level or os.environ.get("LOG_LEVEL") or args.default_level
    _logging(level, args.log_format or os.environ.get("LOG_FORMAT") or "text")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
