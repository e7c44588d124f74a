"""The subcommands that ask a running system from outside: ``call`` (one method, result as JSON),
``ls`` (what etcd holds now) and ``watch`` (nodes joining and leaving, as it happens).

These are plain threaded programs: they never patch with gevent.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

from .shared import (EXIT_ERROR, EXIT_USAGE, FORMATTER, common_flags, etcd_client, etcd_config,
                     fail, log, registry_flags, token_flag, token_of)

_CALL_DESCRIPTION = (
    "Call a method of a registered service and print its result as JSON on stdout.\n\n"
    "Each ARG is parsed as JSON where it is valid JSON (42, true, null, [1,2], {\"a\":1}, "
    "'\"quoted\"'), else taken as a string."
)

_CALL_EPILOG = (
    "examples:\n"
    "  python -m framework call HelloService.Hello world\n"
    "  python -m framework call Math.add 1 2\n"
    "  python -m framework call Users.find --kw name=ann --kw limit=3\n\n"
    "On failure: one line on stderr and exit 1 (the service answered with an error) or 3 (no live "
    "node, deadline passed, etcd unreachable)."
)

_LS_DESCRIPTION = (
    "List what is registered in etcd now: each service, its nodes' addresses and records (pid, "
    "host, uptime, version, methods; * marks idempotent methods). Exit 1 when SERVICE has no node."
)

_WATCH_DESCRIPTION = (
    "Print one line per change, as it happens: 'present' for each node there at start, then "
    "'join', 'leave' and 'update' (same key, new record). Without SERVICE, new services are "
    "picked up every --interval seconds. Ctrl-C or SIGTERM exits 0."
)


def _arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return repr(value)


def call_parser(sub) -> None:
    c = sub.add_parser("call", help="call Service.method once and print the JSON result",
                       formatter_class=FORMATTER,
                       description=_CALL_DESCRIPTION,
                       epilog=_CALL_EPILOG)
    common_flags(c)
    c.add_argument("method", metavar="Service.method")
    c.add_argument("args", nargs="*", metavar="ARG", help="positional params")
    c.add_argument("-k", "--kw", action="append", dest="named", metavar="NAME=VALUE",
                   help="a named param (repeatable; VALUE parsed like ARG)")
    registry_flags(c)
    c.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default 5)")
    c.add_argument("--lane", default=None, metavar="NAME",
                   help="call in this swim lane: every hop goes to nodes labelled lane=NAME "
                   "where the service has any")
    c.add_argument("-m", "--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="call metadata (repeatable), e.g. -m x-user=alice")
    token_flag(c)
    c.add_argument("--pretty", action="store_true", help="indent the JSON result")
    c.add_argument("--debug", action="store_true", help="print a traceback on failure")
    # the one-line error says what failed; retry warnings from the client would only bury it
    c.set_defaults(func=cmd_call, default_level="error")


def cmd_call(args) -> int:
    from ..client import Client
    from ..errors import RpcError, ServiceUnavailable, Timeout

    service, _, name = args.method.rpartition(".")
    if not service or not name:
        print(f"error: method must be Service.method, got {args.method!r}", file=sys.stderr)
        return EXIT_USAGE
    named = {}
    for item in args.named or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --kw takes NAME=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_USAGE
        named[key] = _arg(value)
    if named and args.args:
        print("error: JSON-RPC params are positional or named, not both", file=sys.stderr)
        return EXIT_USAGE
    params = named if named else [_arg(a) for a in args.args]
    metadata = dict(item.partition("=")[::2] for item in args.meta) or None
    try:
        client = Client(etcd=etcd_config(args), timeout=args.timeout, prefix=args.prefix,
                        lane=args.lane, token=token_of(args))
    except (ValueError, RpcError) as exc:
        return fail(exc, args.debug)
    try:
        result = client.call(args.method, params, metadata=metadata)
    except (Timeout, ServiceUnavailable) as exc:
        if not client.discovery.ready(service):
            # the first list never came back: say so, rather than blame the service
            exc = ServiceUnavailable(f"etcd did not answer within {args.timeout}s (endpoints: "
                                     f"{', '.join(client.discovery.etcd.endpoints)})")
        return fail(exc, args.debug, f"{args.method}: ")
    except RpcError as exc:
        return fail(exc, args.debug, f"{args.method}: ")
    except Exception as exc:  # a bug, not a remote error: --debug shows where
        return fail(exc, args.debug, f"{args.method}: ")
    finally:
        client.close()
    indent = 2 if args.pretty else None
    print(json.dumps(result, ensure_ascii=False, indent=indent, default=_jsonable), flush=True)
    return 0


def _node_dict(node) -> dict:
    return {"address": node.address, "key": node.key, "meta": node.meta}


def _registry_view_parser(sub, name: str, summary: str, description: str):
    """The subparser of a command that looks at the registry, all of it or one SERVICE."""
    parser = sub.add_parser(name, help=summary, description=description)
    common_flags(parser)
    parser.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    registry_flags(parser)
    return parser


def ls_parser(sub) -> None:
    ls = _registry_view_parser(sub, "ls", "list services, their nodes, addresses and metadata",
                               _LS_DESCRIPTION)
    ls.add_argument("--json", action="store_true",
                    help="print {service: [{address, key, meta}]} as JSON")
    ls.add_argument("--debug", action="store_true", help="print a traceback on failure")
    ls.set_defaults(func=cmd_ls, default_level="warning")


def cmd_ls(args) -> int:
    from .. import record
    from ..errors import EtcdError

    prefix = args.prefix if args.prefix.endswith("/") else args.prefix + "/"
    try:
        etcd = etcd_client(args)
        _, kvs = etcd.get_prefix(prefix + (args.service + "/" if args.service else ""))
    except (EtcdError, ValueError) as exc:
        return fail(exc, args.debug, "ls: ")
    services: dict = {}
    for kv in kvs:
        name = kv.key[len(prefix):].split("/", 1)[0]
        node = record.parse(kv.key, kv.value)
        if node is not None:
            services.setdefault(name, []).append(node)
    for nodes in services.values():
        nodes.sort(key=lambda n: n.address)
    if args.json:
        print(json.dumps({name: [_node_dict(n) for n in nodes]
                          for name, nodes in sorted(services.items())}, indent=2), flush=True)
    elif not services:
        print(f"no nodes of {args.service} registered" if args.service
              else f"no services registered under {prefix}", flush=True)
    else:
        now = time.time()
        for name, nodes in sorted(services.items()):
            print(f"{name}  ({len(nodes)} node{'s' if len(nodes) != 1 else ''})")
            for node in nodes:
                print("  " + record.summary(node, now))
                methods = record.methods_line(node)
                if methods:
                    print("    " + methods)
        sys.stdout.flush()
    if args.service and not services:
        return EXIT_ERROR
    return 0


class _Watcher:
    """Prints one line per join/leave/update, from the discovery listener (a worker thread)."""

    def __init__(self, discovery, as_json: bool, initial: set):
        self.discovery = discovery
        self.as_json = as_json
        self.initial = initial          # services present at start: their first list is "present"
        self.nodes: dict = {}           # service -> {key: Node}, to tell a join from an update
        self.lock = threading.Lock()

    def emit(self, event: str, service: str, node) -> None:
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        if self.as_json:
            line = json.dumps({"ts": ts, "event": event, "service": service,
                               "address": node.address, "meta": node.meta}, default=str)
        else:
            line = f"{ts} {event:<7} {service} {node.address}"
            pid = node.meta.get("pid")
            if pid is not None:
                line += f" pid={pid}"
            from .. import record
            if record.labels_text(node.meta):
                line += " " + record.labels_text(node.meta)
        print(line, flush=True)

    def __call__(self, service: str, added, removed, snapshot) -> None:
        with self.lock:
            # the listener runs before the first list marks the service ready: that list is the
            # state at start, not news
            first = not self.discovery.ready(service) and service in self.initial
            known = self.nodes.setdefault(service, {})
            for node in removed:
                known.pop(node.key, None)
                self.emit("leave", service, node)
            for node in added:
                event = "present" if first else ("update" if node.key in known else "join")
                known[node.key] = node
                self.emit(event, service, node)


def watch_parser(sub) -> None:
    w = _registry_view_parser(sub, "watch", "stream joins and leaves of nodes, one line each",
                              _WATCH_DESCRIPTION)
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    w.add_argument("--interval", type=float, default=1.0,
                   help="seconds between looks for new services (default 1)")
    w.add_argument("--debug", action="store_true", help="print a traceback on failure")
    w.set_defaults(func=cmd_watch, default_level="warning")


def cmd_watch(args) -> int:
    from ..discovery import Discovery
    from ..errors import EtcdError

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        discovery = Discovery(etcd_client(args), args.prefix)
        initial = {args.service} if args.service else set(discovery.services())
    except (EtcdError, ValueError) as exc:
        return fail(exc, args.debug, "watch: ")
    watcher = _Watcher(discovery, args.json, initial)
    discovery.subscribe(watcher)
    for name in sorted(initial):
        discovery.watch(name)
    # anything registered from here on is news ('join'), not state at start ('present')
    log.info("watching %s", args.service or f"all services under {args.prefix}")
    try:
        while not stop.wait(args.interval):
            if args.service:
                continue
            # new services appear as new key prefixes: look for them, then watch each one
            try:
                names = discovery.services()
            except EtcdError as exc:
                log.warning("cannot list services (%s); the watches keep the last view", exc)
                continue
            for name in names:
                discovery.watch(name)
    finally:
        discovery.close()
    return 0
