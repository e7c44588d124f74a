"""framework: JSON-RPC 2.0 microservices on etcd (registry), msgpack (wire) and gevent (concurrency).

This module is only a facade; each concept lives in the module named after it.
"""
__version__ = "0.1.0"

from .errors import (CommunicationError, ConnectionLost, DeadlineExceeded, EtcdError, GoingAway,
                     InternalError, InvalidParams, InvalidRequest, MethodNotFound, NotSent, Overloaded,
                     ParseError, ProtocolError, RemoteError, RpcError, ServiceUnavailable, Timeout,
                     Unauthorized)
from .service import Service, idempotent, service
from .calls import Call, current_call
from .budget import RetryBudget
from .hedging import Hedging
from .shedding import Shedder
from .tracing import Tracing
from .client import Client
from .etcd import EtcdConfig
from .server import Server

__all__ = [
    "Service", "service", "idempotent", "Server", "Client", "EtcdConfig",
    "Hedging", "RetryBudget", "Shedder", "Call", "current_call", "Tracing",
    "RpcError", "ServiceUnavailable", "Timeout", "CommunicationError", "NotSent", "ConnectionLost",
    "ProtocolError", "EtcdError", "ParseError", "InvalidRequest", "MethodNotFound", "InvalidParams",
    "InternalError", "RemoteError", "GoingAway", "DeadlineExceeded", "Overloaded", "Unauthorized",
]
