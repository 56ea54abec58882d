"""Building, running and draining the gRPC server.

``create_server(config)`` loads the models and binds the port (TLS when configured) but serves nothing yet;
the port carries the native ``curvedit.v1`` API and the Open Inference Protocol (``inference`` package).
``await server.start()`` starts gRPC, the OIP's HTTP/REST side (``--http-port``), the batcher and ``/metrics``,
warms every batch bucket up (timing it, for admission control's estimates) and only then sets health to SERVING
(and OIP readiness to true). ``await server.drain()`` (what
SIGTERM/SIGINT trigger under ``serve``) sets NOT_SERVING and answers new requests with UNAVAILABLE, waits up to
``grace_s`` for accepted work, fails what is left with UNAVAILABLE if the grace runs out, ends open streams with
UNAVAILABLE, then stops: no client sees CANCELLED that it did not cause.

With ``--model-repository`` the models come from a ``repository.ModelRepository``: ``start`` loads them
(through ``activate``, the same path a hot reload takes), then polls every ``repository_poll_s``.

A server that owns its process (``serve_until_signal`` sets ``freeze_heap``) freezes the heap (``settle_heap``)
once warm-up is done and after each version it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from curvedit.inference import grpc_service_pb2_grpc as oip_grpc
from curvedit.service import security, wire
from curvedit.service.admission import Admission
from curvedit.service.config import ServeConfig
from curvedit.service.errors import ShutDown
from curvedit.service.metrics import INFERENCE_SERVICE, SERVICE, ServerMetrics
from curvedit.service.oip import Inference
from curvedit.service.oip_grpc import InferenceServicer
from curvedit.service.oip_http import HttpFront
from curvedit.service.rpc_metrics import RpcMetrics
from curvedit.service.servicer import LatentEditServicer
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # the front-end processes of `serve --workers N` import no torch: models only in hints here
    from curvedit.service.models import ServedModel

log = logging.getLogger(__name__)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Health's service "liveness": SERVING from the moment gRPC listens until the drain, whatever the models do
# (warm-up, an engine restart): the question a liveness probe asks ("is this process alive?"). "" and the API's
# own name answer the readiness question (SERVING: takes requests).
LIVENESS = "liveness"
# gRPC core silently CANCELs calls beyond this many waiting for the application; admission control answers them
# instead (RESOURCE_EXHAUSTED with pushback, counted), so core's own limit is set out of the way.
CORE_PENDING_LIMIT = 1 << 20
HOLD_S = 0.1  # how long the last refusals of a drain are held so gRPC core can stop without cancelling calls


class EditServer:
    """One server: the grpc.aio server, the HTTP front, health and metrics before a compute ``core`` (an
    ``EngineCore``, or a front-end process's link to the engine process). Create it with ``create_server``."""

    def __init__(self, config: ServeConfig, models: dict[str, ServedModel] | None,
                 compute_wrapper: Callable | None = None, core=None, metrics: ServerMetrics | None = None,
                 reuse_port: bool = False):
        self.config = config
        self.reuse_port = reuse_port  # a front-end process of `serve --workers N` shares its ports (SO_REUSEPORT)
        self.metrics = metrics or ServerMetrics()
        if core is None:
            from curvedit.service.engine_core import EngineCore

            core = EngineCore(config, models, self.metrics, compute_wrapper)
        self.core = core
        self.models, self.runner, self.cost = self.core.models, self.core.runner, self.core.cost
        self.repository = self.core.repository
        self.admission = Admission(self.runner, self.cost, config.max_concurrent_requests)
        self.servicer = LatentEditServicer(self.models, self.runner, self.admission, self.metrics,
                                           config.max_items_per_request)
        self.servicer.log_requests = config.log_requests
        self.servicer.not_warm = self.core.not_warm
        self.ready = False  # warm-up done and not draining: OIP readiness (health says SERVING then too)
        self.inference = Inference(self.servicer, lambda: self.ready, self.repository)
        self.health = HealthServicer()
        credentials = security.server_credentials(config)  # read before binding: a bad file fails here
        interceptors = [RpcMetrics(self.metrics)]  # first: it also counts what the token check refuses
        tokens = security.read_tokens(config.auth_token_file) if config.auth_token_file else None
        if tokens is not None:
            interceptors.append(security.TokenAuth(tokens, self._refused))
        limit = config.max_message_mb * 1024 * 1024
        self.grpc = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", int(self.reuse_port)), ("grpc.server.max_pending_requests", CORE_PENDING_LIMIT),
            ("grpc.server.max_pending_requests_hard_limit", CORE_PENDING_LIMIT)])
        registered = wire.register(self.grpc, pb_grpc.add_LatentEditServiceServicer_to_server, self.servicer,
                                   own=True)
        registered |= wire.register(self.grpc, oip_grpc.add_GRPCInferenceServiceServicer_to_server,
                                    InferenceServicer(self.inference), own=True)
        self.methods = set(registered)
        registered |= wire.register(self.grpc, health_pb2_grpc.add_HealthServicer_to_server, self.health,
                                    own=False)
        if config.reflection:
            names = (SERVICE, INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
            registered |= wire.register(self.grpc, reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                                        reflection.aio.ReflectionServicer(names), own=False)
        self.metrics.rpc_methods(registered)
        address = f"{config.host}:{config.port}"
        try:
            self.port = (self.grpc.add_secure_port(address, credentials) if credentials is not None
                         else self.grpc.add_insecure_port(address))
        except RuntimeError as exc:
            raise ValueError(f"cannot bind {address} ({exc}); is another server on that port? pass --port "
                             "with a free port (0 = any)") from None
        self.http = HttpFront(self.inference, self.metrics, limit, tokens, security.http_ssl_context(config))
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._httpd = None

    @property
    def freeze_heap(self) -> bool:
        return self.core.freeze_heap

    @freeze_heap.setter
    def freeze_heap(self, value: bool) -> None:
        self.core.freeze_heap = value

    def stop_warming(self) -> None:
        self.core.stop_warming()

    async def warmed(self) -> None:
        """Return once every model has warmed up (or failed to): ``ready_when="default"`` serves before that."""
        await self.core.warmed()

    def _refused(self, method: str, kind: str) -> None:
        """An RPC refused for want of a valid token: a rejection (the interceptor counts the RPC itself)."""
        self.metrics.rejected("unauthenticated")

    async def _set_health(self, status) -> None:
        for service in ("", SERVICE):
            await self.health.set(service, status)

    async def start(self) -> None:
        """Serve; health says SERVING once warm-up ran every bucket (or at once with ``warmup=False``)."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.config.metrics_port >= 0:
            try:
                self._httpd, self.metrics_port = self.metrics.serve_http(self.config.metrics_host,
                                                                         self.config.metrics_port)
            except OSError as exc:
                raise ValueError(f"cannot serve /metrics on {self.config.metrics_host}:{self.config.metrics_port} "
                                 f"({exc}); pass --metrics-port with a free port (0 = any, -1 = off)") from None
        if self.config.http_port >= 0:
            try:
                self.http_port = await self.http.start(self.config.host, self.config.http_port, self.reuse_port)
            except OSError as exc:
                raise ValueError(f"cannot serve HTTP/REST on {self.config.host}:{self.config.http_port} ({exc}); "
                                 "pass --http-port with a free port (0 = any, -1 = off)") from None
        await self.grpc.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.core.start()
        if not self.servicer.draining:
            self.ready = True
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def drain(self, grace_s: float | None = None) -> bool:
        """NOT_SERVING, refuse new work, wait for accepted work (≤ grace), stop. True if nothing was cut off."""
        grace_s = self.config.grace_s if grace_s is None else grace_s
        self.core.stop_warming()
        self.servicer.draining = True
        self.ready = False
        await self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace_s
        while (self.servicer.inflight > 0 or not self.runner.idle) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        clean = self.servicer.inflight == 0 and self.runner.idle
        if not clean:
            failed = self.runner.fail_all(ShutDown(grace_s))
            log.warning("drain grace of %g s ran out: %d queued or computing request chunks fail with UNAVAILABLE",
                        grace_s, failed)
            end = time.monotonic() + 2.0
            while self.servicer.inflight > 0 and time.monotonic() < end:  # let them send their status
                await asyncio.sleep(0.01)
        # Refusals are held across gRPC's own stop: a client waiting for its answer sends nothing new, and a call
        # arriving while gRPC core shuts down would be CANCELLED by it. Once core stops taking calls, the held
        # refusals go out (UNAVAILABLE), and the clients' next calls find the port closed (UNAVAILABLE too).
        loop = asyncio.get_running_loop()
        self.servicer.hold = loop.create_future()
        self.servicer.close_streams()
        await asyncio.sleep(HOLD_S)
        stopping = asyncio.create_task(self.grpc.stop(max(1.0, deadline - time.monotonic())))
        await asyncio.sleep(HOLD_S / 4)
        self.servicer.hold.set_result(None)
        await stopping
        await self.stop()
        return clean

    async def stop(self, grace_s: float = 0.0) -> None:
        self.core.stop_warming()
        await self.grpc.stop(grace_s)
        if self.servicer.hold is not None and not self.servicer.hold.done():
            self.servicer.hold.set_result(None)
        await self.core.stop()
        await self.http.stop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


def create_server(config: ServeConfig, models: dict[str, ServedModel] | None = None,
                  compute_wrapper: Callable | None = None) -> tuple[EditServer, int]:
    """Load models (unless given) and bind; returns ``(server, bound_port)``. Call inside the event loop."""
    from curvedit.service.models import load_models

    if models is None and not config.model_repository:
        models = load_models(config.models, config.engine, config.expect_digests, config.ort_threads)
    server = EditServer(config, models, compute_wrapper)
    return server, server.port


def _progress_bar(config: ServeConfig, models: int):
    """A warm-up progress bar on a terminal (text logs, several models, warm-up on), else ``None``."""
    if not (config.log_format == "text" and config.warmup and models > 1 and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=models, desc="warm-up", unit="model", file=sys.stderr, leave=False)


async def serve_until_signal(config: ServeConfig, announce=print) -> int:
    """Run until SIGTERM/SIGINT, then drain within ``config.grace_s``. Exit code 0 if the drain was clean.

    A signal that arrives while models load or the default model warms up (nothing accepted yet) stops the
    warm-up between two calls and exits at once; one that arrives while serving drains, also while the other
    models still warm up in the background (their warm-up stops first)."""
    warning = security.exposure_warning(config)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    stop = asyncio.Event()
    received: list[str] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    server, port = create_server(config)
    server.freeze_heap = True
    await asyncio.sleep(0)  # a signal that came while loading is handled now: its handler runs on the loop
    if stop.is_set():
        log.info("curvedit serve: %s while loading the models: stopped before serving", received[0])
        await server.stop()
        return 0
    bar = _progress_bar(config, len(server.models))
    if bar is not None:
        server.core.on_ready = lambda served: (bar.update(1), bar.set_postfix_str(served.name))
    starting = asyncio.create_task(server.start())
    waiting = asyncio.create_task(stop.wait())
    with contextlib.ExitStack() as stack:
        if bar is not None:
            from tqdm.contrib.logging import logging_redirect_tqdm

            stack.enter_context(logging_redirect_tqdm())  # log lines above the bar, not through it
        await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        if bar is not None:
            bar.close()
        warming = [m.name for m in server.models.values() if not m.ready]
        log.info("curvedit serve: %s during warm-up (%s): stopped before serving", received[0],
                 ", ".join(warming) or "finishing")
        server.stop_warming()
        starting.cancel()
        from curvedit.service.models import WarmUpStopped

        with contextlib.suppress(asyncio.CancelledError, WarmUpStopped):
            await starting
        await server.stop()
        return 0
    waiting.cancel()
    starting.result()  # a failed start raises here
    names = ", ".join(f"{m.name} {m.version}" + (f" [repository version {m.repository_version}]"
                                                  if m.repository_version else "") + f" ({m.model.engine})"
                      for m in server.models.values())
    metrics = f"http://{config.metrics_host}:{server.metrics_port}/metrics" if server.metrics_port else "off"
    http = f"http://{config.host}:{server.http_port}/v2" if server.http_port else "off"
    secured = [word for word, on in (("TLS", config.tls_cert), ("mutual TLS", config.tls_client_ca),
                                     ("tokens", config.auth_token_file)) if on]
    warming = [m.name for m in server.models.values() if not m.ready]
    announce(f"curvedit serve: SERVING {names} on {config.host}:{port}; metrics {metrics}; OIP HTTP {http}; "
             f"max_batch_size={config.max_batch_size} max_queue_delay_ms={config.max_queue_delay_ms:g}"
             + (f"; {', '.join(secured)}" if secured else "")
             + (f"; warming up after the default: {', '.join(warming)}" if warming else ""))
    sys.stdout.flush()
    if bar is not None:
        if all(m.ready for m in server.models.values()):
            bar.close()
        else:
            server.core.on_all_ready = bar.close
    await stop.wait()
    announce(f"curvedit serve: draining (grace {config.grace_s:g} s)")
    clean = await server.drain()
    announce("curvedit serve: stopped" + ("" if clean else " (grace ran out; some work was cut off)"))
    return 0 if clean else 1
