"""Every exception a request can raise becomes a gRPC status here, in one function.

Handlers raise ``ServiceError`` (or let ``curvedit.InputError`` from validation through, whose messages already
name the problem and the fix); ``to_status`` turns any exception into ``(code, message, pushback_ms)``. The
taxonomy is by kind, not by class name: an ``InputError`` is the client's (INVALID_ARGUMENT); anything else — a
``ValueError`` from deep inside an engine included — is the server's: INTERNAL, logged once with the request's
id (which the client's message carries too, so the two can be matched), and counted as a failure.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from curvedit.errors import InputError

log = logging.getLogger(__name__)

PUSHBACK_KEY = "grpc-retry-pushback-ms"


class ServiceError(Exception):
    """A request failed with a definite status code; ``pushback_ms`` > 0 adds a retry-pushback trailer.

    ``reason`` is the ``curvedit_rejections_total`` label of a refusal (a fixed set, see ``metrics``).
    """

    reason = ""

    def __init__(self, code: grpc.StatusCode, message: str, pushback_ms: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.pushback_ms = int(pushback_ms)


class QueueFull(ServiceError):
    reason = "queue_full"

    def __init__(self, queued: int, capacity: int, asked: int, pushback_ms: int):
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"queue full: {queued} of {capacity} items queued, this request needs {asked}; retry after "
            f"{pushback_ms} ms (grpc-retry-pushback-ms), or raise --max-queue-size on the server",
            pushback_ms,
        )


class Overloaded(ServiceError):
    reason = "overloaded"

    def __init__(self, active: int, limit: int, pushback_ms: int):
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server busy: {active} requests in progress, the limit is {limit}; retry after {pushback_ms} ms "
            "(grpc-retry-pushback-ms), send more items per request, or raise --max-concurrent-requests",
            pushback_ms,
        )


class DeadlineUnmeetable(ServiceError):
    reason = "deadline_unmeetable"

    def __init__(self, wait_ms: float, remaining_ms: float, pushback_ms: int):
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"cannot finish within your deadline: the work queued ahead needs about {wait_ms:.0f} ms, the "
            f"deadline is {remaining_ms:.0f} ms away; retry after {pushback_ms} ms, allow a longer deadline, or "
            "send fewer items per request",
            pushback_ms,
        )


class Draining(ServiceError):
    reason = "draining"

    def __init__(self, pushback_ms: int = 1000):
        super().__init__(grpc.StatusCode.UNAVAILABLE,
                         "server is shutting down (draining); retry on another replica or after it restarts",
                         pushback_ms)


class WarmingUp(ServiceError):
    """A model that is loaded but not warm yet (``--ready-when default`` warms the others after the first)."""

    reason = "warming_up"

    def __init__(self, model: str, ahead: int, eta_s: float | None, failure: str = ""):
        if failure:
            super().__init__(grpc.StatusCode.UNAVAILABLE,
                             f"model {model} failed to warm up ({failure}) and takes no requests; see the server "
                             "log, fix the bundle and restart (or ask another replica)")
            return
        wait = f"about {eta_s:.0f} s" if eta_s is not None else "a few seconds"
        queue = f", {ahead} model(s) ahead of it" if ahead else ""
        pushback_ms = max(100, min(int(1000 * (eta_s or 1.0)), 10_000))
        super().__init__(grpc.StatusCode.UNAVAILABLE,
                         f"model {model} is warming up{queue}: ready in {wait}; retry after {pushback_ms} ms "
                         "(grpc-retry-pushback-ms), or use a model that is ready (ListModels, OIP ModelReady)",
                         pushback_ms)


class ShutDown(ServiceError):
    """Accepted work cut off because the drain's grace period ran out (the operator's choice, not the client's)."""

    def __init__(self, grace_s: float):
        super().__init__(grpc.StatusCode.UNAVAILABLE,
                         f"server stopped before this request finished (drain grace of {grace_s:g} s ran out); "
                         "retry on another replica or after it restarts", 1000)


class DeadlineExpired(ServiceError):
    def __init__(self, stage: str, computing: bool = False):
        what = "stopped between steps" if computing else "dropped before compute"
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"deadline passed while {stage}; the work was {what} — "
                         "allow a longer deadline or send fewer items per request")


class Cancelled(ServiceError):
    def __init__(self):
        super().__init__(grpc.StatusCode.CANCELLED, "the client cancelled the request")


class InvalidInput(ServiceError, InputError):
    """A request the service itself refuses as malformed (it is an ``InputError`` too)."""

    reason = "invalid"

    def __init__(self, message: str):
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message)


def invalid(message: str) -> ServiceError:
    return InvalidInput(message)


def not_found(message: str) -> ServiceError:
    error = ServiceError(grpc.StatusCode.NOT_FOUND, message)
    error.reason = "not_found"
    return error


def unauthenticated(message: str) -> ServiceError:
    error = ServiceError(grpc.StatusCode.UNAUTHENTICATED, message)
    error.reason = "unauthenticated"
    return error


def to_status(exc: BaseException, request_id: str = "") -> tuple[grpc.StatusCode, str, int]:
    """``(code, message, pushback_ms)`` for any exception raised while serving a request.

    Anything unexpected is logged here, once, with ``request_id`` (and its traceback); the client's message
    names the same id.
    """
    if isinstance(exc, ServiceError):
        return exc.code, exc.message, exc.pushback_ms
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), 0
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the client cancelled the request", 0
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", 0
    where = f" (request {request_id})" if request_id else ""
    log.error("internal error while serving a request%s", where, exc_info=exc,
              extra={"request_id": request_id or None, "code": "INTERNAL"})
    return (grpc.StatusCode.INTERNAL,
            f"internal error ({type(exc).__name__}){where}; see the server log", 0)


def reject_reason(exc: BaseException, code: grpc.StatusCode) -> str | None:
    """The ``curvedit_rejections_total`` reason of a request refused before compute, else ``None``."""
    if isinstance(exc, ServiceError) and exc.reason:
        return exc.reason
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return "invalid"
    return None


def failure_reason(code: grpc.StatusCode) -> str:
    """Triton's ``nv_inference_request_failure`` reason for a status code: REJECTED is what Triton means by it,
    a request the server refused for want of room or while unavailable; a malformed request is OTHER."""
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        return "REJECTED"
    if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
        return "CANCELED"
    if code == grpc.StatusCode.INTERNAL:
        return "BACKEND"
    return "OTHER"
