"""TLS and bearer tokens for ``curvedit serve``.

* TLS: ``--tls-cert`` / ``--tls-key`` (PEM) serve over TLS; ``--tls-client-ca`` additionally requires every client
  to present a certificate signed by that CA (mutual TLS).
* Tokens: ``--auth-token-file`` holds one or more tokens, one per line (blank lines and ``#`` comments ignored).
  Every RPC except ``grpc.health.v1.Health`` then needs the metadata ``authorization: Bearer <token>``, else
  UNAUTHENTICATED; on the HTTP/REST port every path but ``/v2/health/*`` needs the same header, else 401.
  Tokens are compared in constant time (``hmac.compare_digest``, against every token) and are never logged or
  put in an error message.
* ``exposure_warning``: binding a non-loopback address with neither TLS nor tokens is allowed, with a warning
  (and with another when tokens would cross the network without TLS).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from pathlib import Path

import grpc

from curvedit.service.config import ServeConfig

HEALTH_PREFIX = "/grpc.health.v1.Health/"
UNAUTHENTICATED = ("missing or unknown bearer token: send the metadata `authorization: Bearer <token>` with a "
                   "token from the server's --auth-token-file (curvedit client --token-file FILE)")


def _read(path: str, what: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path} ({exc.strerror}); pass {flag} with a readable PEM "
                         "file") from None


def server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the config's PEM files, or ``None`` when TLS is off."""
    if not config.tls_cert:
        return None
    cert = _read(config.tls_cert, "TLS certificate", "--tls-cert")
    key = _read(config.tls_key, "TLS private key", "--tls-key")
    if b"-----BEGIN" not in cert or b"-----BEGIN" not in key:
        raise ValueError(f"--tls-cert {config.tls_cert} and --tls-key {config.tls_key} must be PEM files "
                         "(-----BEGIN CERTIFICATE----- / -----BEGIN PRIVATE KEY-----)")
    ca = _read(config.tls_client_ca, "client CA", "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def http_ssl_context(config: ServeConfig):
    """The same TLS (and mutual TLS) for the HTTP/REST port, or ``None`` when TLS is off."""
    if not config.tls_cert:
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(config.tls_client_ca)
    return context


def read_tokens(path: str) -> list[bytes]:
    """The tokens of a token file: one per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path} ({exc.strerror}); pass --auth-token-file with a "
                         "file holding one token per line") from None
    tokens = [line.strip().encode() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not tokens:
        raise ValueError(f"the token file {path} holds no token; put one token per line in it")
    return tokens


def token_matches(header: str | None, tokens: list[bytes]) -> bool:
    """Whether ``header`` is ``Bearer <one of tokens>``; every token is compared, in constant time."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer "):].strip().encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token)
    return matched


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses every RPC but health without a valid bearer token. ``on_refused(method, kind)`` counts it."""

    def __init__(self, tokens: list[bytes], on_refused: Callable[[str, str], None]):
        self.tokens = tokens
        self.on_refused = on_refused

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        header = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if token_matches(header if isinstance(header, str) else None, self.tokens):
            return handler
        return _denying(handler, details.method, self.on_refused)


def _denying(handler: grpc.RpcMethodHandler, method: str, on_refused) -> grpc.RpcMethodHandler:
    """``handler`` of the same kind whose behaviour answers UNAUTHENTICATED (the request is never looked at)."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        if getattr(handler, kind) is not None:
            async def deny(_request, context, kind=kind):
                on_refused(method, kind)
                # Set, not abort: the status leaves once the handler returns, after the interceptors have
                # counted the RPC, so a client that sees UNAUTHENTICATED finds it counted.
                context.set_code(grpc.StatusCode.UNAUTHENTICATED)
                context.set_details(UNAUTHENTICATED)
            return handler._replace(**{kind: deny})
    return handler


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def exposure_warning(config: ServeConfig) -> str | None:
    """A warning line when the gRPC port is reachable from other machines without TLS (with or without tokens)."""
    if is_loopback(config.host) or config.tls_cert:
        return None
    if config.auth_token_file:
        return (f"WARNING: serving on {config.host} without TLS: the bearer tokens cross the network unencrypted; "
                "pass --tls-cert/--tls-key")
    return (f"WARNING: serving on {config.host}, reachable from other machines, with neither TLS nor tokens: "
            "anyone who can reach the port can use it; pass --tls-cert/--tls-key and --auth-token-file")
