"""Building the coordinator's gRPC server: the Coordinator service plus health and reflection."""

from __future__ import annotations

import ipaddress
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kdmkb.coordinator.auth import SERVICE_NAME, AuthInterceptor, Tokens
from kdmkb.coordinator.service import Coordinator
from kdmkb.coordinator.servicer import CoordinatorServicer
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from kdmkb.services.errors import ConfigError, PreconditionError
from kdmkb.services.tls import ServerTLS


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` binds only the loopback interface."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or a wildcard: not provably loopback


def check_exposure(address: str, tls: ServerTLS | None, tokens: Tokens | None, insecure: bool) -> None:
    """Refuses to serve beyond loopback without both TLS and tokens, unless ``insecure`` says so."""
    if is_loopback(address) or insecure or (tls and tokens):
        return
    missing = " and ".join(name for name, given in (("--tls-cert/--tls-key", tls), ("--tokens", tokens)) if not given)
    raise ConfigError(f"address: {address} is not a loopback address; serving it without {missing} needs --insecure")


def start_server(coordinator: Coordinator, address: str = "127.0.0.1:0", tokens: Tokens | None = None, tls: ServerTLS | None = None) -> tuple[grpc.Server, int]:
    """Starts serving on ``address`` (port 0 picks a free port); returns the server and its port.

    With ``tokens`` every Coordinator call needs a token (coordinator/auth.py); with ``tls`` the
    port speaks TLS only. Every open WatchJob stream holds a thread; the coordinator's limits cap
    them (``max_streams``) below the pool's size, so ``unary_threads`` threads always answer the
    other calls. The port is never shared (no SO_REUSEPORT): a second server on it fails to start.
    """
    limits = coordinator.limits
    interceptors = [AuthInterceptor(tokens, coordinator)] if tokens else []
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
    ]
    pool = futures.ThreadPoolExecutor(max_workers=limits.max_streams + limits.unary_threads, thread_name_prefix="grpc")
    server = grpc.server(pool, interceptors=interceptors, options=options)
    pb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(coordinator), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    except RuntimeError:  # grpc >= 1.55 raises where older versions returned 0
        port = 0
    if port == 0:
        raise PreconditionError(f"address: cannot listen on {address}: the port is in use (another server?) or the host is not an address of this machine")
    server.start()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, port
