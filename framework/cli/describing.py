"""The ``describe`` subcommand: a service's OpenRPC document (methods, parameters, types, result,
idempotency, errors), as one of its live nodes answers ``rpc.discover``, printed as JSON on stdout.

Without SERVICE it prints the one document of every live service, as the gateway's
``GET /openrpc.json`` does; with ``--module`` the document is made from the code of a module's
``@service`` classes, with no etcd and no node. A plain threaded program: it never patches with
gevent. The documents are :mod:`framework.schema`'s.
"""
from __future__ import annotations

import importlib
import json
import sys

from .shared import (EXIT_USAGE, FORMATTER, common_flags, etcd_config, fail, registry_flags,
                     token_flag, token_of)

_DESCRIPTION = (
    "Print the OpenRPC document (https://spec.open-rpc.org) of SERVICE as JSON: what one of its "
    "live nodes answers to rpc.discover. Without SERVICE: one document for every live service. "
    "With --module: the document of that module's @service classes, made from their code (no "
    "etcd, no node)."
)

_EPILOG = (
    "examples:\n"
    "  python -m framework describe HelloService\n"
    "  python -m framework describe | jq '.methods[].name'\n"
    "  python -m framework describe --module demo_hello.service > openrpc.json\n\n"
    "On failure: one line on stderr and exit 1 (a node answered with an error) or 3 (no live "
    "node, deadline passed, etcd unreachable)."
)


def describe_parser(sub) -> None:
    d = sub.add_parser("describe", help="print a service's OpenRPC document (rpc.discover)",
                       formatter_class=FORMATTER, description=_DESCRIPTION, epilog=_EPILOG)
    common_flags(d)
    d.add_argument("service", nargs="?", metavar="SERVICE",
                   help="the service (default: every live service, in one document)")
    d.add_argument("--module", default=None, metavar="MODULE",
                   help="describe this module's @service classes from their code instead")
    registry_flags(d)
    d.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default 5)")
    token_flag(d)
    d.add_argument("--debug", action="store_true", help="print a traceback on failure")
    d.set_defaults(func=cmd_describe, default_level="error")


def cmd_describe(args) -> int:
    if args.module:
        return _from_module(args)
    from .. import schema
    from ..client import Client
    from ..errors import RpcError, ServiceUnavailable

    try:
        client = Client(etcd=etcd_config(args), timeout=args.timeout, prefix=args.prefix,
                        token=token_of(args))
    except (ValueError, RpcError) as exc:
        return fail(exc, args.debug)
    try:
        if args.service:
            doc = schema.fetch(client, args.service, args.timeout)
        else:
            doc = schema.Catalog(client, args.timeout).document()
    except RpcError as exc:
        if args.service and not client.discovery.ready(args.service):
            # the first list never came back: say so, rather than blame the service
            exc = ServiceUnavailable(f"etcd did not answer within {args.timeout}s (endpoints: "
                                     f"{', '.join(client.discovery.etcd.endpoints)})")
        return fail(exc, args.debug, "describe: ")
    except Exception as exc:  # a bug, not a remote error: --debug shows where
        return fail(exc, args.debug, "describe: ")
    finally:
        client.close()
    _print(doc)
    return 0


def _from_module(args) -> int:
    from .. import schema
    from ..service import services_in_module, spec_of

    try:
        module = importlib.import_module(args.module)
    except ImportError as exc:
        return fail(exc, args.debug, "describe: ")
    classes = [cls for cls in services_in_module(module)
               if args.service is None or spec_of(cls).name == args.service]
    if not classes:
        print(f"error: describe: no @service class{' ' + args.service if args.service else ''} "
              f"in {args.module}", file=sys.stderr)
        return EXIT_USAGE
    _print(schema.node_document(classes))
    return 0


def _print(doc: dict) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False), flush=True)
