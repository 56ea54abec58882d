"""Registering services on the grpc.aio server so that bytes which are not a valid message never raise.

gRPC's generated registration deserializes with ``Message.FromString``; corrupt bytes then raise inside gRPC,
which answers UNKNOWN and logs a traceback. Here every handler's deserializer returns a ``requests.Corrupt``
instead (logged as one warning line). ``LatentEditService`` turns it into INVALID_ARGUMENT itself (so the
refusal is counted, and a corrupt message in a stream fails only that message); for the other services (health,
reflection) a small wrapper answers INVALID_ARGUMENT before their own code sees it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import grpc

from curvedit.service.requests import Corrupt

log = logging.getLogger(__name__)


class _Capture:
    """Stands in for a server in a generated ``add_*_to_server``: keeps the handlers it registers."""

    def __init__(self):
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers come again through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.services[service] = dict(handlers)


def tolerant(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    """``deserialize``, returning ``Corrupt`` where it would raise."""
    if deserialize is None:
        return None
    message_type = getattr(getattr(deserialize, "__self__", None), "__name__", "message")

    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, or anything else a hostile payload can provoke
            log.warning("refused a corrupt %s of %d bytes (%s): INVALID_ARGUMENT", message_type, len(data),
                        type(exc).__name__)
            return Corrupt(message_type, len(data), str(exc).split(":")[-1].strip() or type(exc).__name__)
    return parse


async def _refuse(corrupt: Corrupt, context) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, corrupt.error.message)


def _refuse_unary(corrupt: Corrupt, context) -> None:
    """Set, not abort: the status leaves when the handler returns, after the interceptors have counted the RPC,
    so a client that sees INVALID_ARGUMENT finds it counted. (Streams abort: their behaviour must stop.)"""
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    context.set_details(corrupt.error.message)


def _guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A foreign service's handler that refuses ``Corrupt`` requests before its behaviour runs."""
    if handler.unary_unary is not None:
        behaviour = handler.unary_unary

        async def unary_unary(request, context):
            if isinstance(request, Corrupt):
                return _refuse_unary(request, context)
            return await behaviour(request, context)
        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None:
        behaviour = handler.unary_stream
        if inspect.isasyncgenfunction(behaviour):
            async def unary_stream(request, context):
                if isinstance(request, Corrupt):
                    await _refuse(request, context)
                async for response in behaviour(request, context):
                    yield response
        else:
            async def unary_stream(request, context):
                if isinstance(request, Corrupt):
                    return await _refuse(request, context)
                return await behaviour(request, context)
        return handler._replace(unary_stream=unary_stream)
    if handler.stream_stream is not None:
        behaviour = handler.stream_stream

        async def checked(requests, context):
            async for request in requests:
                if isinstance(request, Corrupt):
                    await _refuse(request, context)
                yield request

        if inspect.isasyncgenfunction(behaviour):
            async def stream_stream(requests, context):
                async for response in behaviour(checked(requests, context), context):
                    yield response
        else:
            async def stream_stream(requests, context):
                return await behaviour(checked(requests, context), context)
        return handler._replace(stream_stream=stream_stream)
    return handler  # (no such methods among the services served here)


KINDS = (("unary_unary", "unary"), ("unary_stream", "server_stream"), ("stream_unary", "client_stream"),
         ("stream_stream", "bidi_stream"))  # handler attribute → go-grpc-prometheus's grpc_type


def register(server: grpc.aio.Server, add_to_server: Callable, servicer, own: bool) -> dict[str, str]:
    """``add_to_server(servicer, server)`` with tolerant deserializers; ``own`` = the servicer handles ``Corrupt``.

    Returns the methods registered: full name (``/package.Service/Method``) → grpc_type (``unary``, ...).
    """
    capture = _Capture()
    add_to_server(servicer, capture)
    names = {}
    for service, handlers in capture.services.items():
        safe = {}
        for method, handler in handlers.items():
            handler = handler._replace(request_deserializer=tolerant(handler.request_deserializer))
            safe[method] = handler if own else _guarded(handler)
            names[f"/{service}/{method}"] = next(kind for attr, kind in KINDS if getattr(handler, attr))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, safe),))
        server.add_registered_method_handlers(service, safe)
    return names
