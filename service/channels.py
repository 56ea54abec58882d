"""Channels to ``curvedit serve``: plaintext, TLS, mutual TLS, and a bearer token on every call.

``Security`` says how to reach a server; ``open_channel`` / ``open_aio_channel`` build a blocking / asyncio
channel from it (the token is added by a client interceptor, so stubs made on the channel carry it too).
"""

from __future__ import annotations

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


def open_channel(target: str, security: Security | None = None) -> grpc.Channel:
    """A blocking channel to ``target`` with ``security`` (TLS, client certificate, token) applied."""
    security = security or Security()
    options = _OPTIONS + security.options()
    credentials = security.credentials()
    channel = (grpc.secure_channel(target, credentials, options=options) if credentials is not None
               else grpc.insecure_channel(target, options=options))
    token = security.token()
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


def open_aio_channel(target: str, security: Security | None = None) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` with ``security`` applied."""
    security = security or Security()
    options = _OPTIONS + security.options()
    credentials = security.credentials()
    token = security.token()
    interceptors = [bearer(token) for bearer in _ASYNC_BEARERS] if token else None
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
