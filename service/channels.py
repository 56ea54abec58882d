"""Channels to ``curvedit serve``: plaintext, TLS, mutual TLS, and a bearer token on every call; one server or
several, balanced per request.

``Security`` says how to reach a server; ``open_channel`` / ``open_aio_channel`` build a blocking / asyncio
channel from it (the token is added by a client interceptor, so stubs made on the channel carry it too).

Several servers (``balanced_target``): a target of several ``host:port`` (a list, or one string with commas), or
``dns:///name:port`` whose name has several addresses (a Kubernetes headless Service), gives one channel with a
subchannel per address and gRPC's ``round_robin`` policy: each call goes to the next ready server, so load spreads
per request, not per connection. Its service config retries a call that ends UNAVAILABLE (a server gone or
draining) or RESOURCE_EXHAUSTED (refused for overload) on another attempt, after the server's pushback
(``grpc-retry-pushback-ms``, which curvedit's refusals carry) or else an exponential backoff, at most
``RETRY_ATTEMPTS`` attempts in all; every curvedit RPC is a pure function of its request, so a retry is safe.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

MAX_MESSAGE = 64 * 1024 * 1024
_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


@dataclass(frozen=True)
class Security:
    """How to reach a secured server; the default is plaintext without a token.

    ``ca_file``: PEM CA that signed the server's certificate (turns TLS on). ``tls``: TLS with the system's CA
    roots instead. ``cert_file``/``key_file``: this client's certificate and key, for mutual TLS.
    ``token_file``: its first token is sent as ``authorization: Bearer <token>`` on every call.
    ``server_name``: the name to check the server's certificate against, when it differs from the target host.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token_file: str | None = None
    tls: bool = False
    server_name: str | None = None

    def __post_init__(self):
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a client certificate needs both --client-cert and --client-key (PEM files)")

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.ca_file or self.cert_file)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.uses_tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "--ca-file") if self.ca_file else None,
            private_key=_read(self.key_file, "--client-key") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "--client-cert") if self.cert_file else None)

    def token(self) -> str | None:
        if not self.token_file:
            return None
        lines = [line.strip() for line in _read(self.token_file, "--token-file").decode().splitlines()]
        tokens = [line for line in lines if line and not line.startswith("#")]
        if not tokens:
            raise ValueError(f"the token file {self.token_file} holds no token; put the token on its first line")
        return tokens[0]

    def options(self) -> list[tuple[str, object]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror}); check {flag}") from None


class _Details(grpc.ClientCallDetails):
    def __init__(self, details, metadata):
        self.method, self.timeout, self.credentials = details.method, details.timeout, details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = getattr(details, "compression", None)
        self.metadata = metadata


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of a blocking channel."""

    def __init__(self, token: str):
        self.header = ("authorization", f"Bearer {token}")

    def _with(self, details):
        return _Details(details, [*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with(details), requests)


class _AsyncBearer:
    """Adds ``authorization: Bearer <token>`` to the calls of an asyncio channel (one subclass per call kind:
    grpc.aio files an interceptor under the first kind it implements only)."""

    def __init__(self, token: str):
        self.header = ("authorization", f"Bearer {token}")

    def _with(self, d):
        metadata = grpc.aio.Metadata(*(d.metadata or ()), self.header)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)


class _AsyncBearerUnaryUnary(_AsyncBearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with(details), request)


class _AsyncBearerUnaryStream(_AsyncBearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with(details), request)


class _AsyncBearerStreamUnary(_AsyncBearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, requests):
        return await continuation(self._with(details), requests)


class _AsyncBearerStreamStream(_AsyncBearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, requests):
        return await continuation(self._with(details), requests)


_ASYNC_BEARERS = (_AsyncBearerUnaryUnary, _AsyncBearerUnaryStream, _AsyncBearerStreamUnary,
                  _AsyncBearerStreamStream)


RETRY_ATTEMPTS = 4
# The services a balanced channel retries (every curvedit RPC is idempotent: the same request, the same answer).
_RETRIED = ("curvedit.v1.LatentEditService", "inference.GRPCInferenceService", "grpc.health.v1.Health")
_BALANCED = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": name} for name in _RETRIED],
        "retryPolicy": {"maxAttempts": RETRY_ATTEMPTS, "initialBackoff": "0.05s", "maxBackoff": "2s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]},
    }],
}
# gRPC keeps a request for a retry only up to these sizes (its defaults, 256 KiB per call, would leave a request
# of 1,024 latents of 64 floats without one).
_RETRY_BUFFERS = [("grpc.per_rpc_retry_buffer_size", 16 * 1024 * 1024),
                  ("grpc.retry_buffer_size", 256 * 1024 * 1024)]


def balanced_target(target: str | Sequence[str]) -> tuple[str, list[tuple[str, object]]]:
    """The gRPC target and extra channel options for ``target``: one ``host:port`` passes through unchanged (no
    options); several (a list, or commas in one string) become one ``ipv4:``/``ipv6:`` target of every address
    they resolve to now, and ``dns:///name:port`` stays a DNS target re-resolved by gRPC; both balanced and
    retried as the module says."""
    targets = [target] if isinstance(target, str) else list(target)
    targets = [t.strip() for item in targets for t in item.split(",") if t.strip()]
    if not targets:
        raise ValueError("no server given: pass host:port, several host:port separated by commas, or "
                         "dns:///name:port")
    options = [("grpc.service_config", json.dumps(_BALANCED)), ("grpc.enable_retries", 1), *_RETRY_BUFFERS]
    if len(targets) == 1:
        return (targets[0], options) if targets[0].startswith("dns:") else (targets[0], [])
    addresses = [address for t in targets for address in _resolve(t)]
    family = "ipv6" if all(":" in a.rsplit(":", 1)[0] for a in addresses) else "ipv4"
    kept = [a for a in addresses if (":" in a.rsplit(":", 1)[0]) == (family == "ipv6")]
    host = _split(targets[0])[0]
    if not _is_ip(host):  # TLS checks the certificate against the name given, not an address
        options.append(("grpc.default_authority", targets[0]))
    return f"{family}:{','.join(dict.fromkeys(kept))}", options


def _split(target: str) -> tuple[str, str]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or target.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        raise ValueError(f"server {target!r}: several servers must each be host:port (e.g. 10.0.0.5:50051); for "
                         "a DNS name with several addresses pass the one target dns:///name:port")
    return host.strip("[]"), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _resolve(target: str) -> list[str]:
    host, port = _split(target)
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"server {target!r}: cannot resolve {host!r} ({exc.strerror}); check the name") from None
    return [f"[{info[4][0]}]:{port}" if info[0] == socket.AF_INET6 else f"{info[4][0]}:{port}" for info in infos]


def open_channel(target: str | Sequence[str], security: Security | None = None) -> grpc.Channel:
    """A blocking channel to ``target`` (one server or several, see ``balanced_target``) with ``security``
    (TLS, client certificate, token) applied."""
    security = security or Security()
    target, balancing = balanced_target(target)
    options = _OPTIONS + balancing + security.options()
    credentials = security.credentials()
    channel = (grpc.secure_channel(target, credentials, options=options) if credentials is not None
               else grpc.insecure_channel(target, options=options))
    token = security.token()
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


def open_aio_channel(target: str | Sequence[str], security: Security | None = None) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (one server or several) with ``security`` applied."""
    security = security or Security()
    target, balancing = balanced_target(target)
    options = _OPTIONS + balancing + security.options()
    credentials = security.credentials()
    token = security.token()
    interceptors = [bearer(token) for bearer in _ASYNC_BEARERS] if token else None
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
