"""Every exception a request can raise becomes a gRPC status here, in one function.

Handlers raise ``ServiceError`` (or let ``ValueError`` from ``curvedit.api.Model`` through, whose messages
already name the problem and the fix); ``to_status`` turns any exception into ``(code, message, pushback_ms)``.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from curvedit.bundle import BundleError

log = logging.getLogger(__name__)

PUSHBACK_KEY = "grpc-retry-pushback-ms"


class ServiceError(Exception):
    """A request failed with a definite status code; ``pushback_ms`` > 0 adds a retry-pushback trailer."""

    def __init__(self, code: grpc.StatusCode, message: str, pushback_ms: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.pushback_ms = int(pushback_ms)


class QueueFull(ServiceError):
    def __init__(self, queued: int, capacity: int, asked: int, pushback_ms: int):
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"queue full: {queued} of {capacity} items queued, this request needs {asked}; retry after "
            f"{pushback_ms} ms (grpc-retry-pushback-ms), or raise --max-queue-size on the server",
            pushback_ms,
        )


class Draining(ServiceError):
    def __init__(self, pushback_ms: int = 1000):
        super().__init__(grpc.StatusCode.UNAVAILABLE,
                         "server is shutting down (draining); retry on another replica or after it restarts",
                         pushback_ms)


class DeadlineExpired(ServiceError):
    def __init__(self, stage: str):
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"deadline passed while {stage}; the work was dropped before compute — "
                         "allow a longer deadline or send fewer items per request")


class Cancelled(ServiceError):
    def __init__(self):
        super().__init__(grpc.StatusCode.CANCELLED, "the client cancelled the request")


def invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str, int]:
    """``(code, message, pushback_ms)`` for any exception raised while serving a request."""
    if isinstance(exc, ServiceError):
        return exc.code, exc.message, exc.pushback_ms
    if isinstance(exc, ValueError | BundleError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), 0
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the client cancelled the request", 0
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", 0
    log.exception("internal error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}: {exc}); see the server log", 0


def failure_reason(code: grpc.StatusCode) -> str:
    """Triton's ``nv_inference_request_failure`` reason for a status code."""
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return "REJECTED"
    if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
        return "CANCELED"
    if code == grpc.StatusCode.INTERNAL:
        return "BACKEND"
    return "OTHER"
