"""Command line: ``python -m framework serve | gateway | call | ls | watch | etcd``.

``serve`` and ``gateway`` monkey-patch the process with gevent first thing, the way gunicorn's gevent
worker does; the library itself never patches on import. ``call``, ``ls`` and ``watch`` are plain
threaded programs. Logs go to stderr (``--log-level``, ``--log-format text|json``); results go to
stdout, so ``call`` and ``ls --json`` compose with ``jq``.

Exit codes: 0 success; 1 the call or lookup failed with an answer (handler error, no such method,
no such service in ``ls``); 2 bad usage; 3 nothing answered (no live node, deadline passed, etcd
unreachable).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, List, Optional

log = logging.getLogger("framework")

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def _patch() -> None:
    from gevent import monkey
    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(exc: BaseException) -> str:
    from .errors import RemoteError, RpcError
    if isinstance(exc, RemoteError):
        return _one_line(f"{exc.type or 'RemoteError'}: {exc.message} (code {exc.code})")
    if isinstance(exc, RpcError):
        return _one_line(f"{type(exc).__name__}: {exc.message or type(exc).__name__} "
                         f"(code {exc.code})")
    return _one_line(f"{type(exc).__name__}: {exc}")


def _exit_code(exc: BaseException) -> int:
    from .errors import CommunicationError, EtcdError, ServiceUnavailable, Timeout
    if isinstance(exc, (ServiceUnavailable, Timeout, CommunicationError, EtcdError)):
        return EXIT_UNREACHABLE
    return EXIT_ERROR


def _fail(exc: BaseException, debug: bool, context: str = "") -> int:
    if debug:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"error: {context}{_describe(exc)}", file=sys.stderr, flush=True)
    return _exit_code(exc)


def etcd_config(args):
    """The EtcdConfig of the ``--etcd*`` flags (see ``_registry``); environment variables fill gaps."""
    from .etcd import EtcdConfig
    return EtcdConfig.from_env(endpoints=args.etcd, ca=args.etcd_ca, cert=args.etcd_cert,
                               key=args.etcd_key, username=args.etcd_user,
                               password=args.etcd_password)


def _etcd_client(args):
    return etcd_config(args).client()


def rpc_security_options(args) -> dict:
    """Server keyword arguments for TLS on the RPC port and the shared call token (both off unless
    given)."""
    from .tls import client_tls_context, server_tls_context
    options: dict = {"token": args.token or os.environ.get("FRAMEWORK_TOKEN") or None}
    if args.tls_cert:
        options["tls"] = server_tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    if args.tls_ca:
        options["client_tls"] = client_tls_context(args.tls_ca)
    return options


def limit_options(args) -> dict:
    """Server keyword arguments for the limits given on the command line (others keep defaults)."""
    names = ("max_concurrency", "max_conn_in_flight", "max_connections", "frame_timeout",
             "max_frame")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_serve(args) -> int:
    _patch()
    from .server import Server
    from .service import services_in_module

    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(args.module)
    services = services_in_module(module)
    if not services:
        print(f"error: no @framework.service class defined in {args.module}", file=sys.stderr)
        return 2
    server = Server(services, host=args.host, port=args.port, etcd=etcd_config(args), ttl=args.ttl,
                    prefix=args.prefix, advertise=args.advertise, **rpc_security_options(args),
                    **limit_options(args))
    if args.grace is not None:
        server.grace = args.grace
    if args.drain_timeout is not None:
        server.drain_timeout = args.drain_timeout
    server.start()
    if server.registration is not None and not server.registration.wait_registered(10.0):
        log.warning("not registered in etcd yet; serving anyway and retrying in the background")
    host, port = server.address
    names = ",".join(spec.name for spec in server.specs)
    return _serve_until_signal(server, "deregistering, draining, exiting",
                               f"serving {names} on {host}:{port} advertised as {server.advertised}")


def cmd_etcd(args) -> int:
    import subprocess
    from .devetcd import EtcdProcess
    data_dir = args.data_dir or os.path.join(os.getcwd(), ".etcd-data")
    member = EtcdProcess(data_dir=data_dir, port=args.port, peer_port=args.peer_port, host=args.host)
    child = subprocess.Popen(member.command())
    print(f"etcd listening on {member.endpoint} (data in {data_dir}); Ctrl-C stops it", flush=True)
    stopping = []

    def stop(signum, frame):  # a clean stop is a success, whichever signal asked for it
        stopping.append(signum)
        child.terminate()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    code = child.wait()
    return 0 if stopping else code


def cmd_gateway(args) -> int:
    _patch()
    from .gateway import Gateway
    from .jsonrpc_http import Limits

    limits = Limits(max_body=args.max_body, max_batch=args.max_batch, max_depth=args.max_depth)
    gateway = Gateway(etcd_config(args), prefix=args.prefix, timeout=args.timeout,
                      max_timeout=args.max_timeout, limits=limits,
                      token=args.token or os.environ.get("FRAMEWORK_TOKEN") or None,
                      services=args.service)
    gateway.grace = args.grace
    try:
        gateway.start(args.host, args.port, max_connections=args.max_connections)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host, port = gateway.address
    return _serve_until_signal(gateway, "draining the gateway and exiting",
                               f"gateway listening on {host}:{port}")


def _serve_until_signal(component, what: str, ready: str) -> int:
    """Run ``component`` (a Server or Gateway) until SIGTERM/SIGINT asks for its graceful stop.
    ``ready`` is printed on stdout once the handlers are in place: scripts and framework.testing
    wait for that line, and a signal sent right after it must already mean a graceful stop."""
    import gevent

    def shutdown(signum):
        log.info("signal %s: %s", signal.Signals(signum).name, what)
        gevent.spawn(component.stop)

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, shutdown, sig)
    print(ready, flush=True)
    component.serve_forever()
    return 0


def _arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return repr(value)


def cmd_call(args) -> int:
    from .client import Client
    from .errors import RpcError, ServiceUnavailable, Timeout

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
    try:
        client = Client(etcd=etcd_config(args), timeout=args.timeout, prefix=args.prefix)
    except (ValueError, RpcError) as exc:
        return _fail(exc, args.debug)
    try:
        result = client.call(args.method, params)
    except (Timeout, ServiceUnavailable) as exc:
        if not client.discovery.ready(service):
            # the first list never came back: say so, rather than blame the service
            exc = ServiceUnavailable(f"etcd did not answer within {args.timeout}s (endpoints: "
                                     f"{', '.join(client.discovery.etcd.endpoints)})")
        return _fail(exc, args.debug, f"{args.method}: ")
    except RpcError as exc:
        return _fail(exc, args.debug, f"{args.method}: ")
    except Exception as exc:  # a bug, not a remote error: --debug shows where
        return _fail(exc, args.debug, f"{args.method}: ")
    finally:
        client.close()
    indent = 2 if args.pretty else None
    print(json.dumps(result, ensure_ascii=False, indent=indent, default=_jsonable), flush=True)
    return 0


def _node_dict(node) -> dict:
    return {"address": node.address, "key": node.key, "meta": node.meta}


def cmd_ls(args) -> int:
    from . import record
    from .errors import EtcdError

    prefix = args.prefix if args.prefix.endswith("/") else args.prefix + "/"
    try:
        etcd = _etcd_client(args)
        _, kvs = etcd.get_prefix(prefix + (args.service + "/" if args.service else ""))
    except (EtcdError, ValueError) as exc:
        return _fail(exc, args.debug, "ls: ")
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


def cmd_watch(args) -> int:
    from .discovery import Discovery
    from .errors import EtcdError

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        discovery = Discovery(_etcd_client(args), args.prefix)
        initial = {args.service} if args.service else set(discovery.services())
    except (EtcdError, ValueError) as exc:
        return _fail(exc, args.debug, "watch: ")
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


def _common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # on subcommands the defaults are SUPPRESSed, so a value given before the subcommand survives
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--log-level", default=default, metavar="LEVEL",
                        help="debug, info, warning or error (default $LOG_LEVEL, else info for "
                        "serve/gateway/etcd, warning for ls/watch, error for call)")
    parser.add_argument("--log-format", default=default, choices=("text", "json"),
                        help="text (default) or json: one JSON object per log line")


def _registry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--etcd", default=None, metavar="ENDPOINTS",
                        help="etcd endpoints, comma-separated (default $ETCD_ENDPOINTS or "
                        "127.0.0.1:2379; TLS and auth from $ETCD_CA, $ETCD_CERT, $ETCD_KEY, "
                        "$ETCD_USER, $ETCD_PASSWORD)")
    parser.add_argument("--etcd-ca", default=None, metavar="PEM",
                        help="CA that signed etcd's server certificate; turns TLS on ($ETCD_CA)")
    parser.add_argument("--etcd-cert", default=None, metavar="PEM",
                        help="client certificate for etcd --client-cert-auth ($ETCD_CERT)")
    parser.add_argument("--etcd-key", default=None, metavar="PEM",
                        help="key of --etcd-cert ($ETCD_KEY)")
    parser.add_argument("--etcd-user", default=None, help="etcd user name ($ETCD_USER)")
    parser.add_argument("--etcd-password", default=None,
                        help="etcd password ($ETCD_PASSWORD; prefer the variable: flags show in ps)")
    parser.add_argument("--prefix", default="/services/",
                        help="registry key prefix (default /services/)")


_FORMATTER = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m framework", formatter_class=_FORMATTER,
        description="JSON-RPC 2.0 microservices on etcd, msgpack and gevent.",
        epilog="examples:\n"
        "  python -m framework etcd &\n"
        "  python -m framework serve demo_hello.service --port 4000\n"
        "  python -m framework call HelloService.Hello world\n"
        "  python -m framework ls\n"
        "  python -m framework gateway --port 8080\n"
        "  curl -d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"HelloService.Hello\","
        "\"params\":[\"world\"]}' localhost:8080\n\n"
        "exit codes: 0 ok, 1 failed with an answer, 2 usage, 3 nothing answered")
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="serve every @framework.service class of a module",
                       formatter_class=_FORMATTER,
                       description="Serve every @framework.service class defined in MODULE on one "
                       "port, register it in etcd and keep it registered.\n\n"
                       "The same port answers msgpack JSON-RPC (framework clients) and HTTP:\n"
                       "  GET /healthz   200 while serving, 503 while draining\n"
                       "  GET /metrics   Prometheus text\n"
                       "  POST /         JSON-RPC 2.0 for this node's services\n\n"
                       "SIGTERM or SIGINT: deregister at once, keep serving for --grace seconds, "
                       "answer later calls with GoingAway, wait up to --drain-timeout for calls "
                       "in flight, exit 0.")
    _common(s)
    s.add_argument("module", help="importable module, e.g. demo_hello.service")
    s.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    s.add_argument("--port", type=int, default=0, help="bind port (default 0: any free port)")
    s.add_argument("--advertise", default=None,
                   help="host[:port] published in etcd (default: the bound address, or this "
                   "machine's primary address when bound to 0.0.0.0)")
    _registry(s)
    s.add_argument("--ttl", type=int, default=10,
                   help="lease TTL in seconds (default 10): how long a dead node stays listed")
    s.add_argument("--grace", type=float, default=None,
                   help="seconds to keep serving after deregistering (default 0.5)")
    s.add_argument("--drain-timeout", type=float, default=None,
                   help="longest wait for calls in flight at shutdown (default 10)")
    s.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="serve the RPC port over TLS with this certificate (off by default)")
    s.add_argument("--tls-key", default=None, metavar="PEM", help="key of --tls-cert")
    s.add_argument("--tls-client-ca", default=None, metavar="PEM",
                   help="also require client certificates signed by this CA (mutual TLS)")
    s.add_argument("--tls-ca", default=None, metavar="PEM",
                   help="CA to verify other nodes' certificates when this node calls them")
    s.add_argument("--token", default=None,
                   help="require this shared token on every call ($FRAMEWORK_TOKEN; off by default)")
    s.add_argument("--max-concurrency", type=int, default=None,
                   help="calls in flight on this node (default 1000)")
    s.add_argument("--max-conn-in-flight", type=int, default=None,
                   help="calls in flight per connection (default 256)")
    s.add_argument("--max-connections", type=int, default=None,
                   help="open connections at once (default 10000)")
    s.add_argument("--frame-timeout", type=float, default=None,
                   help="seconds to finish a TLS handshake, the first bytes or a begun frame "
                   "(default 30)")
    s.add_argument("--max-frame", type=int, default=None,
                   help="largest frame body accepted, in bytes (default 8 MiB)")
    s.set_defaults(func=cmd_serve, default_level="info")

    g = sub.add_parser("gateway", help="HTTP JSON-RPC 2.0 front door to every registered service",
                       formatter_class=_FORMATTER,
                       description="Serve JSON-RPC 2.0 over HTTP: POST / with a request, a "
                       "notification or a batch; each \"Service.method\" call goes through the "
                       "framework client (watched cache, retries, deadlines).\n\n"
                       "  GET /healthz   200 while serving, 503 while draining\n"
                       "  GET /metrics   Prometheus text\n\n"
                       "HTTP status of a single call: 200 result or handler error, 204 "
                       "notification, 400 parse/invalid request/params, 404 no such method or "
                       "service, 413 body too large, 502 node lost mid-call, 503 no live node, "
                       "504 deadline passed. A batch answers 200.")
    _common(g)
    g.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    g.add_argument("--port", type=int, default=8080, help="bind port (default 8080; 0: any)")
    _registry(g)
    g.add_argument("--timeout", type=float, default=5.0,
                   help="per-call deadline in seconds (default 5); a request's meta.timeout_ms "
                   "overrides it, up to --max-timeout")
    g.add_argument("--max-timeout", type=float, default=60.0,
                   help="cap on meta.timeout_ms, in seconds (default 60)")
    g.add_argument("--max-body", type=int, default=1024 * 1024,
                   help="largest request body in bytes (default 1 MiB; larger: 413)")
    g.add_argument("--max-batch", type=int, default=100,
                   help="most requests in one batch (default 100)")
    g.add_argument("--max-depth", type=int, default=32,
                   help="deepest JSON nesting accepted (default 32)")
    g.add_argument("--max-connections", type=int, default=10000,
                   help="concurrent HTTP connections (default 10000)")
    g.add_argument("--grace", type=float, default=0.5,
                   help="on SIGTERM, seconds /healthz says 503 before the port closes (default 0.5)")
    g.add_argument("--token", default=None,
                   help="shared token sent to the nodes on every call ($FRAMEWORK_TOKEN)")
    g.add_argument("--service", action="append", default=[], metavar="NAME",
                   help="a service this gateway fronts (repeatable): while none of its nodes is "
                   "registered, even since before the gateway started, its calls get 503 "
                   "(-32010), not 404")
    g.set_defaults(func=cmd_gateway, default_level="info")

    c = sub.add_parser("call", help="call Service.method once and print the JSON result",
                       formatter_class=_FORMATTER,
                       description="Call a method of a registered service and print its result "
                       "as JSON on stdout.\n\nEach ARG is parsed as JSON where it is valid JSON "
                       "(42, true, null, [1,2], {\"a\":1}, '\"quoted\"'), else taken as a string.",
                       epilog="examples:\n"
                       "  python -m framework call HelloService.Hello world\n"
                       "  python -m framework call Math.add 1 2\n"
                       "  python -m framework call Users.find --kw name=ann --kw limit=3\n\n"
                       "On failure: one line on stderr and exit 1 (the service answered with "
                       "an error) or 3 (no live node, deadline passed, etcd unreachable).")
    _common(c)
    c.add_argument("method", metavar="Service.method")
    c.add_argument("args", nargs="*", metavar="ARG", help="positional params")
    c.add_argument("-k", "--kw", action="append", dest="named", metavar="NAME=VALUE",
                   help="a named param (repeatable; VALUE parsed like ARG)")
    _registry(c)
    c.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default 5)")
    c.add_argument("--pretty", action="store_true", help="indent the JSON result")
    c.add_argument("--debug", action="store_true", help="print a traceback on failure")
    # the one-line error says what failed; retry warnings from the client would only bury it
    c.set_defaults(func=cmd_call, default_level="error")

    ls = sub.add_parser("ls", help="list services, their nodes, addresses and metadata",
                        description="List what is registered in etcd now: each service, its "
                        "nodes' addresses and records (pid, host, uptime, version, methods; "
                        "* marks idempotent methods). Exit 1 when SERVICE has no node.")
    _common(ls)
    ls.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    _registry(ls)
    ls.add_argument("--json", action="store_true",
                    help="print {service: [{address, key, meta}]} as JSON")
    ls.add_argument("--debug", action="store_true", help="print a traceback on failure")
    ls.set_defaults(func=cmd_ls, default_level="warning")

    w = sub.add_parser("watch", help="stream joins and leaves of nodes, one line each",
                       description="Print one line per change, as it happens: 'present' for "
                       "each node there at start, then 'join', 'leave' and 'update' (same key, "
                       "new record). Without SERVICE, new services are picked up every "
                       "--interval seconds. Ctrl-C or SIGTERM exits 0.")
    _common(w)
    w.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    _registry(w)
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    w.add_argument("--interval", type=float, default=1.0,
                   help="seconds between looks for new services (default 1)")
    w.add_argument("--debug", action="store_true", help="print a traceback on failure")
    w.set_defaults(func=cmd_watch, default_level="warning")

    e = sub.add_parser("etcd", help="run a local single-node etcd for development",
                       description="Run a single-member etcd on loopback for development. "
                       "Data lives in --data-dir, so a restart keeps registrations and leases.")
    _common(e)
    e.add_argument("--data-dir", default=None, help="default ./.etcd-data")
    e.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    e.add_argument("--port", type=int, default=2379, help="client port (default 2379)")
    e.add_argument("--peer-port", type=int, default=2380, help="peer port (default 2380)")
    e.set_defaults(func=cmd_etcd, default_level="info")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or os.environ.get("LOG_LEVEL") or args.default_level
    _logging(level, args.log_format or os.environ.get("LOG_FORMAT") or "text")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
