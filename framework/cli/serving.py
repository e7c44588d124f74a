"""The long-running subcommands: ``serve`` (a node), ``gateway`` (the HTTP front door) and ``etcd``
(a local development etcd).

``serve`` and ``gateway`` monkey-patch the process with gevent first thing (``_patch``), so the
server and gateway modules are imported inside their command functions, after the patch, never at
the top of this module.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys

from .shared import EXIT_USAGE, FORMATTER, common_flags, etcd_config, log, registry_flags, token_of

_SERVE_DESCRIPTION = (
    "Serve every @framework.service class defined in MODULE on one port, register it in etcd and "
    "keep it registered.\n\n"
    "The same port answers msgpack JSON-RPC (framework clients) and HTTP:\n"
    "  GET /healthz   200 while serving, 503 while draining\n"
    "  GET /metrics   Prometheus text\n"
    "  POST /         JSON-RPC 2.0 for this node's services\n\n"
    "SIGTERM or SIGINT: deregister at once, keep serving for --grace seconds, answer later calls "
    "with GoingAway, wait up to --drain-timeout for calls in flight, exit 0."
)

_GATEWAY_DESCRIPTION = (
    "Serve JSON-RPC 2.0 over HTTP: POST / with a request, a notification or a batch; each "
    "\"Service.method\" call goes through the framework client (watched cache, retries, "
    "deadlines).\n\n"
    "  GET /healthz   200 while serving, 503 while draining\n"
    "  GET /metrics   Prometheus text\n\n"
    "HTTP status of a single call: 200 result or handler error, 204 notification, 400 "
    "parse/invalid request/params, 404 no such method or service, 413 body too large, 502 node "
    "lost mid-call, 503 no live node, 504 deadline passed. A batch answers 200."
)

_ETCD_DESCRIPTION = (
    "Run a single-member etcd on loopback for development. Data lives in --data-dir, so a restart "
    "keeps registrations and leases."
)


def _patch() -> None:
    from gevent import monkey
    if not monkey.is_module_patched("socket"):
        with _entry_points_scanned_once():
            monkey.patch_all()


@contextlib.contextmanager
def _entry_points_scanned_once():
    """gevent offers each module it patches to plugins registered as entry points, and finds them
    by scanning every installed distribution, once per module: 25 scans, about 0.35 s of CPU of
    each node's and gateway's start in a venv of some 60 packages. The plugins found are the same
    each time, so they are found once and the same ones still get every event."""
    from importlib import metadata
    scan = metadata.entry_points
    found = scan()
    # Python 3.10+: a selectable collection (3.8/3.9: a dict, which gevent reads whole)
    metadata.entry_points = (lambda **params: found.select(**params)  # type: ignore[assignment]
                             if params else found)
    try:
        yield
    finally:
        metadata.entry_points = scan


def rpc_security_options(args) -> dict:
    """Server keyword arguments for TLS on the RPC port and the shared call token (both off unless
    given)."""
    from ..tls import client_tls_context, server_tls_context
    options: dict = {"token": args.token or os.environ.get("FRAMEWORK_TOKEN") or None}
    if args.tls_cert:
        options["tls"] = server_tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    if args.tls_ca:
        options["client_tls"] = client_tls_context(args.tls_ca)
    return options


def limit_options(args) -> dict:
    """Server keyword arguments for the limits given on the command line (others keep defaults)."""
    names = ("max_concurrency", "max_conn_in_flight", "max_connections", "frame_timeout",
             "write_timeout", "max_frame")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if getattr(args, "shed_target", None) is not None:
        from ..shedding import Shedder
        options["shedding"] = Shedder(target=args.shed_target, enabled=args.shed_target > 0)
    return options


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


def serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="serve every @framework.service class of a module",
                       formatter_class=FORMATTER,
                       description=_SERVE_DESCRIPTION)
    common_flags(s)
    s.add_argument("module", help="importable module, e.g. demo_hello.service")
    s.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    s.add_argument("--port", type=int, default=0, help="bind port (default 0: any free port)")
    s.add_argument("--advertise", default=None,
                   help="host[:port] published in etcd (default: the bound address, or this "
                   "machine's primary address when bound to 0.0.0.0)")
    registry_flags(s)
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
    s.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label published in the registry record, for routing (repeatable): "
                   "--label zone=eu-1 --label version=v2 (lane=NAME: a swim lane; weight=N: share "
                   "of traffic, default 100)")
    s.add_argument("--interceptor", action="append", default=[], metavar="PKG.MOD:FN",
                   help="run fn(call, proceed) around every handler (repeatable; the first is "
                   "outermost)")
    s.add_argument("--max-concurrency", type=int, default=None,
                   help="calls in flight on this node (default 1000)")
    s.add_argument("--max-conn-in-flight", type=int, default=None,
                   help="calls in flight per connection (default 256)")
    s.add_argument("--max-connections", type=int, default=None,
                   help="open connections at once (default 10000)")
    s.add_argument("--frame-timeout", type=float, default=None,
                   help="seconds to finish a TLS handshake, the first bytes or a begun frame "
                   "(default 30)")
    s.add_argument("--write-timeout", type=float, default=None,
                   help="seconds a client may read none of its answers before its connection is "
                   "cut (default 10)")
    s.add_argument("--max-frame", type=int, default=None,
                   help="largest frame body accepted, in bytes (default 8 MiB)")
    workers_flags(s)
    busy_poll_flag(s)
    s.add_argument("--shed-target", type=float, default=None,
                   help="once saturated, refuse calls that would wait longer than this many seconds "
                   "for a worker (default 0.05; 0: never refuse)")
    s.set_defaults(func=cmd_serve, default_level="info")


def workers_flags(parser) -> None:
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="run N worker processes on the one port (a supervisor binds it, "
                        "holds the registration, restarts dead workers; SIGHUP replaces them one "
                        "by one). Default: serve in this process")
    parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)


def busy_poll_flag(parser) -> None:
    parser.add_argument("--busy-poll", type=_budget, default=0.0, metavar="US",
                        help="after each event, keep polling this many microseconds before "
                        "sleeping: lower latency at low load, paid in CPU (200 is usual; "
                        "default 0: off)")


def _budget(text: str) -> float:
    from ..busypoll import check_budget
    try:
        return check_budget(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _supervise(args, registration=None) -> int:
    """``--workers N``: bind, start the workers, supervise (:mod:`framework.prefork`)."""
    from ..prefork import Supervisor, listen, worker_argv
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    grace = args.grace if args.grace is not None else 0.5
    supervisor = Supervisor(worker_argv(args.argv), args.workers, sock, registration, grace,
                            getattr(args, "drain_timeout", None) or 10.0)
    try:
        line = supervisor.start()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        supervisor.stop()
        return 1
    print(f"{line} ({args.workers} workers, supervisor {os.getpid()})", flush=True)
    return supervisor.run()


def _worker_mode(component, args) -> None:
    """A pre-fork worker: accept on the inherited socket, leave registering and the grace window
    to the supervisor, and stop should the supervisor die."""
    import socket as socket_module
    import gevent
    component.listener = socket_module.socket(fileno=args.listen_fd)
    component.max_accept = 1   # one connection per wake-up: the other workers get their turn
    component.register = False
    component.grace = 0.0
    # its address stays registered while it drains (a reload): clients learn it is going away
    # only from its GOAWAY, so late requests get GoingAway (re-sent) for longer before the close
    component.linger = 1.0
    parent = os.getppid()

    def watch_parent():
        while os.getppid() == parent:
            gevent.sleep(1.0)
        log.warning("supervisor %d is gone; stopping", parent)
        component.stop()
    gevent.spawn(watch_parent)


def cmd_serve(args) -> int:
    if args.workers and args.listen_fd is None:
        from ..registry import Registration
        etcd = etcd_config(args).client()
        return _supervise(args, lambda records: Registration(etcd, records, args.ttl))
    _patch()
    from .. import busypoll, calls
    from ..server import Server
    from ..service import services_in_module

    busypoll.install(args.busy_poll)   # the loop's watchers keep it alive

    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(args.module)
    services = services_in_module(module)
    if not services:
        print(f"error: no @framework.service class defined in {args.module}", file=sys.stderr)
        return EXIT_USAGE
    try:
        interceptors = [calls.load(spec) for spec in args.interceptor]
    except ValueError as exc:
        print(f"error: --interceptor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        labels = dict(label.split("=", 1) for label in args.label)
        server = Server(services, host=args.host, port=args.port, etcd=etcd_config(args),
                        ttl=args.ttl, prefix=args.prefix, advertise=args.advertise, labels=labels,
                        interceptors=interceptors, **rpc_security_options(args),
                        **limit_options(args))
    except ValueError as exc:   # a label without "=", or one too long
        print(f"error: --label: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.grace is not None:
        server.grace = args.grace
    if args.drain_timeout is not None:
        server.drain_timeout = args.drain_timeout
    if args.listen_fd is not None:
        _worker_mode(server, args)
    server.start()
    if args.listen_fd is not None:   # what the supervisor registers for this address
        print("records " + json.dumps(server.entries()), flush=True)
    if server.registration is not None and not server.registration.wait_registered(10.0):
        log.warning("not registered in etcd yet; serving anyway and retrying in the background")
    host, port = server.address
    names = ",".join(spec.name for spec in server.specs)
    return _serve_until_signal(server, "deregistering, draining, exiting",
                               f"serving {names} on {host}:{port} advertised as {server.advertised}")


def gateway_parser(sub) -> None:
    g = sub.add_parser("gateway", help="HTTP JSON-RPC 2.0 front door to every registered service",
                       formatter_class=FORMATTER,
                       description=_GATEWAY_DESCRIPTION)
    common_flags(g)
    g.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    g.add_argument("--port", type=int, default=8080, help="bind port (default 8080; 0: any)")
    registry_flags(g)
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
    g.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a request begun has to arrive whole (default 30; then 408)")
    g.add_argument("--idle-timeout", type=float, default=75.0,
                   help="seconds a keep-alive connection may sit idle (default 75)")
    g.add_argument("--grace", type=float, default=0.5,
                   help="on SIGTERM, seconds /healthz says 503 before the port closes (default 0.5)")
    g.add_argument("--token", default=None,
                   help="shared token sent to the nodes on every call ($FRAMEWORK_TOKEN)")
    g.add_argument("--service", action="append", default=[], metavar="NAME",
                   help="a service this gateway fronts (repeatable): while none of its nodes is "
                   "registered, even since before the gateway started, its calls get 503 "
                   "(-32010), not 404")
    workers_flags(g)
    busy_poll_flag(g)
    g.add_argument("--forward-header", action="append", default=[], metavar="NAME",
                   help="pass this HTTP header on to the nodes as call metadata (repeatable; "
                   "traceparent, tracestate and baggage always are)")
    g.set_defaults(func=cmd_gateway, default_level="info")


def cmd_gateway(args) -> int:
    if args.workers and args.listen_fd is None:
        return _supervise(args)
    _patch()
    from .. import busypoll
    from ..gateway import Gateway
    from ..jsonrpc_http import Limits

    busypoll.install(args.busy_poll)   # the loop's watchers keep it alive

    limits = Limits(max_body=args.max_body, max_batch=args.max_batch, max_depth=args.max_depth)
    try:
        gateway = Gateway(etcd_config(args), prefix=args.prefix, timeout=args.timeout,
                          max_timeout=args.max_timeout, limits=limits, token=token_of(args),
                          services=args.service, forward_headers=args.forward_header,
                          request_timeout=args.request_timeout, idle_timeout=args.idle_timeout)
    except ValueError as exc:   # a bound of its HTTP connections (framework.httpserver)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    gateway.grace = args.grace
    if args.listen_fd is not None:
        _worker_mode(gateway, args)
    try:
        gateway.start(args.host, args.port, max_connections=args.max_connections,
                      listener=getattr(gateway, "listener", None))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host, port = gateway.address
    return _serve_until_signal(gateway, "draining the gateway and exiting",
                               f"gateway listening on {host}:{port}")


def etcd_parser(sub) -> None:
    e = sub.add_parser("etcd", help="run a local single-node etcd for development",
                       description=_ETCD_DESCRIPTION)
    common_flags(e)
    e.add_argument("--data-dir", default=None, help="default ./.etcd-data")
    e.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    e.add_argument("--port", type=int, default=2379, help="client port (default 2379)")
    e.add_argument("--peer-port", type=int, default=2380, help="peer port (default 2380)")
    e.set_defaults(func=cmd_etcd, default_level="info")


def cmd_etcd(args) -> int:
    import subprocess
    from ..devetcd import EtcdProcess
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
