"""Command line: ``python -m framework serve | etcd`` (and, as they land, the operator commands).

``serve`` and ``gateway`` monkey-patch the process with gevent first thing, the way gunicorn's gevent
worker does; the library itself never patches on import.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import List, Optional

log = logging.getLogger("framework")


def _patch() -> None:
    from gevent import monkey
    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def cmd_serve(args) -> int:
    _patch()
    import gevent
    from .server import Server
    from .service import services_in_module

    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(args.module)
    services = services_in_module(module)
    if not services:
        print(f"error: no @framework.service class defined in {args.module}", file=sys.stderr)
        return 2
    server = Server(services, host=args.host, port=args.port, etcd=args.etcd, ttl=args.ttl,
                    prefix=args.prefix, advertise=args.advertise)
    server.start()
    if server.registration is not None and not server.registration.wait_registered(10.0):
        log.warning("not registered in etcd yet; serving anyway and retrying in the background")
    host, port = server.address
    names = ",".join(spec.name for spec in server.specs)
    # one parseable line on stdout: scripts and framework.testing wait for it
    print(f"serving {names} on {host}:{port} advertised as {server.advertised}", flush=True)

    def shutdown(signum):
        log.info("signal %s: deregistering, draining, exiting", signal.Signals(signum).name)
        gevent.spawn(server.stop)

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, shutdown, sig)
    server.serve_forever()
    return 0


def cmd_etcd(args) -> int:
    from .devetcd import EtcdProcess, find_binary
    data_dir = args.data_dir or os.path.join(os.getcwd(), ".etcd-data")
    member = EtcdProcess(data_dir=data_dir, port=args.port, peer_port=args.peer_port, host=args.host)
    print(f"etcd listening on {member.endpoint} (data in {data_dir}); Ctrl-C stops it", flush=True)
    os.execv(find_binary(), member.command())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m framework",
                                description="JSON-RPC 2.0 microservices on etcd, msgpack and gevent.")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"),
                   help="debug, info, warning or error (default: info)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve every @framework.service class of a module",
                       description="Serve every @framework.service class defined in MODULE on one "
                       "port, register it in etcd and keep it registered. SIGTERM or SIGINT "
                       "deregisters, drains in-flight calls and exits 0.")
    s.add_argument("module", help="importable module, e.g. demo_hello.service")
    s.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    s.add_argument("--port", type=int, default=0, help="bind port (default 0: any free port)")
    s.add_argument("--advertise", default=None,
                   help="host[:port] published in etcd (default: the bound address, or this "
                   "machine's primary address when bound to 0.0.0.0)")
    s.add_argument("--etcd", default=None,
                   help="etcd endpoints, comma-separated (default $ETCD_ENDPOINTS or 127.0.0.1:2379)")
    s.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds (default 10)")
    s.add_argument("--prefix", default="/services/", help="registry key prefix (default /services/)")
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("etcd", help="run a local single-node etcd for development",
                       description="Run a single-member etcd on loopback for development.")
    e.add_argument("--data-dir", default=None, help="default ./.etcd-data")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=2379, help="client port (default 2379)")
    e.add_argument("--peer-port", type=int, default=2380, help="peer port (default 2380)")
    e.set_defaults(func=cmd_etcd)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.log_level)
    return args.func(args) or 0
