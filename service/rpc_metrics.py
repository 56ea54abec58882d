"""``RpcMetrics``: the go-grpc-prometheus ``grpc_server_*`` metrics for every RPC, from one server interceptor.

Every service on the port is counted (the native API, the Open Inference Protocol, health, reflection), with the
standard labels ``grpc_type``, ``grpc_service``, ``grpc_method`` (and ``grpc_code`` once handled); stream
messages are counted as they pass. Handlers record nothing themselves. The handled count is taken before the
status leaves the server (the wrapped handler returns or raises first), so a client that sees its status finds
it counted. ``py-grpc-prometheus`` was the maintained candidate, but it intercepts the blocking ``grpc.Server``
only, not ``grpc.aio``, and writes to the global registry; so this is the project's own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

import grpc

from curvedit.service.metrics import ServerMetrics
from curvedit.service.wire import KINDS

log = logging.getLogger(__name__)



def _code(context, exc: BaseException | None) -> str:
    """The status an RPC ends with: what the handler set (``context.abort``), else from how it ended."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        # gRPC cancels the handler when the deadline passes (its timer may fire a few ms early).
        late = remaining is not None and remaining <= 0.02
        return "DEADLINE_EXCEEDED" if late else "CANCELLED"
    code = context.code()
    if code is not None and code != 0:
        return code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode(
            next(c.value for c in grpc.StatusCode if c.value[0] == code)).name
    return "OK" if exc is None else "UNKNOWN"


class _Recorder:
    """The metric children of one method, resolved once (the interceptor wraps each method once): an RPC's
    recording is then a few attribute updates on the event loop (``metrics.LoopFamily``)."""

    __slots__ = ("handled", "handling", "labels", "metrics", "received", "sent", "started")

    def __init__(self, metrics: ServerMetrics, labels: tuple[str, str, str], streams_in: bool, streams_out: bool):
        self.metrics, self.labels = metrics, labels
        self.started, self.handling = metrics.started.labels(*labels), metrics.handling.labels(*labels)
        self.handled: dict[str, object] = {}  # status code name → its child
        self.received = metrics.msg_received.labels(*labels) if streams_in else None
        self.sent = metrics.msg_sent.labels(*labels) if streams_out else None

    def done(self, context, error: BaseException | None, start: float) -> None:
        """The RPC ended (``error``: what its handler raised): count it by status, and its time."""
        try:
            code = _code(context, error)
            child = self.handled.get(code)
            if child is None:
                child = self.handled[code] = self.metrics.handled.labels(*self.labels, code)
            child.inc()
            self.handling.observe(time.perf_counter() - start)
        except Exception:  # metrics must never break serving
            log.exception("recording the end of RPC %s failed", self.labels[2])


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Wraps each handler so its start, end, status, time and stream messages are recorded."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler:  # registered handlers are the same object every call
            return cached[1]
        service, _, method = details.method.lstrip("/").rpartition("/")
        wrapped = self._wrap(handler, service, method)
        if len(self._wrapped) < 1024:  # per-call handlers (e.g. a refusal) are wrapped, not kept
            self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
        for attribute, kind in KINDS:
            behaviour = getattr(handler, attribute)
            if behaviour is not None:
                return handler._replace(**{attribute: self._behaviour(behaviour, kind, service, method)})
        return handler

    def _behaviour(self, behaviour, kind: str, service: str, method: str):
        streams_out = kind in ("server_stream", "bidi_stream") and inspect.isasyncgenfunction(behaviour)
        streams_in = kind in ("client_stream", "bidi_stream")
        rpc = _Recorder(self.metrics, (kind, service, method), streams_in, streams_out)

        async def counted(requests):
            async for request in requests:
                rpc.received.inc()
                yield request

        if streams_out:
            async def generator(request_or_iterator, context):
                rpc.started.inc()
                start, error = time.perf_counter(), None
                try:
                    source = counted(request_or_iterator) if streams_in else request_or_iterator
                    async for response in behaviour(source, context):
                        rpc.sent.inc()
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    rpc.done(context, error, start)
            return generator

        async def call(request_or_iterator, context):
            rpc.started.inc()
            start, error = time.perf_counter(), None
            try:
                return await behaviour(counted(request_or_iterator) if streams_in else request_or_iterator,
                                       context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                rpc.done(context, error, start)
        return call
