"""What every subcommand shares: exit codes, the ``--log-*`` and ``--etcd*`` flag groups, the etcd
configuration those flags give, the shared call token, and the one-line error report on stderr."""
from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("framework")

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3

FORMATTER = argparse.RawDescriptionHelpFormatter


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(exc: BaseException) -> str:
    from ..errors import RemoteError, RpcError
    if isinstance(exc, RemoteError):
        return _one_line(f"{exc.type or 'RemoteError'}: {exc.message} (code {exc.code})")
    if isinstance(exc, RpcError):
        return _one_line(f"{type(exc).__name__}: {exc.message or type(exc).__name__} "
                         f"(code {exc.code})")
    return _one_line(f"{type(exc).__name__}: {exc}")


def _exit_code(exc: BaseException) -> int:
    from ..errors import CommunicationError, EtcdError, ServiceUnavailable, Timeout
    if isinstance(exc, (ServiceUnavailable, Timeout, CommunicationError, EtcdError)):
        return EXIT_UNREACHABLE
    return EXIT_ERROR


def fail(exc: BaseException, debug: bool, context: str = "") -> int:
    """Print ``exc`` as one ``error:`` line on stderr (after its traceback with ``--debug``) and
    return the exit code it deserves."""
    if debug:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"error: {context}{_describe(exc)}", file=sys.stderr, flush=True)
    return _exit_code(exc)


def etcd_config(args):
    """The EtcdConfig of the ``--etcd*`` flags (see ``registry_flags``); environment variables fill
    gaps."""
    from ..etcd import EtcdConfig
    return EtcdConfig.from_env(endpoints=args.etcd, ca=args.etcd_ca, cert=args.etcd_cert,
                               key=args.etcd_key, username=args.etcd_user,
                               password=args.etcd_password)


def etcd_client(args):
    return etcd_config(args).client()


def common_flags(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # on subcommands the defaults are SUPPRESSed, so a value given before the subcommand survives
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--log-level", default=default, metavar="LEVEL",
                        help="debug, info, warning or error (default $LOG_LEVEL, else info for "
                        "serve/gateway/etcd, warning for ls/watch, error for call)")
    parser.add_argument("--log-format", default=default, choices=("text", "json"),
                        help="text (default) or json: one JSON object per log line")


def registry_flags(parser: argparse.ArgumentParser) -> None:
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


def token_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=None,
                        help="shared token sent to the nodes with every call ($FRAMEWORK_TOKEN)")


def token_of(args) -> "str | None":
    """The ``--token`` given, else ``$FRAMEWORK_TOKEN``, else None (no token)."""
    return args.token or os.environ.get("FRAMEWORK_TOKEN") or None
