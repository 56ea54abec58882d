"""Building, running and draining the gRPC server.

``create_server(config)`` loads the models and binds the port but serves nothing yet; ``await server.start()``
starts gRPC, the batcher and ``/metrics``, warms every batch bucket up and only then sets health to SERVING;
``await server.drain()`` (what SIGTERM/SIGINT trigger under ``serve``) sets NOT_SERVING, answers new requests
with UNAVAILABLE, waits up to ``grace_s`` for accepted work, then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from curvedit.service.batcher import Batch, BatchQueue, BatchRunner, Entry, bucket_sizes
from curvedit.service.config import ServeConfig
from curvedit.service.metrics import SERVICE, ServerMetrics
from curvedit.service.models import ServedModel, load_models
from curvedit.service.servicer import LatentEditServicer
from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class _BatchMetrics:
    """The batcher's observer: executed batches and dropped items → metrics (``ServerMetrics`` never raises)."""

    def __init__(self, models: dict[str, ServedModel], metrics: ServerMetrics):
        self.models, self.metrics = models, metrics

    def dropped(self, entry: Entry, reason: str) -> None:
        served = self.models[entry.key[0]]
        self.metrics.dropped(served.name, served.version, reason, entry.n)

    def executed(self, batch: Batch, compute_s: float, error: BaseException | None) -> None:
        served = self.models[batch.key[0]]
        if error is None:
            self.metrics.batch(served.name, served.version, batch.size, batch.bucket, batch.reason, batch.stages)


class EditServer:
    """One server: the grpc.aio server, the batcher, health, metrics. Create it with ``create_server``."""

    def __init__(self, config: ServeConfig, models: dict[str, ServedModel],
                 compute_wrapper: Callable | None = None):
        self.config = config
        self.models = models
        self.metrics = ServerMetrics()
        compute = self._compute if compute_wrapper is None else compute_wrapper(self._compute)
        queue = BatchQueue(config.max_batch_size, config.max_queue_delay_s, config.max_queue_size)
        self.runner = BatchRunner(queue, compute, _BatchMetrics(models, self.metrics))
        for served in models.values():
            name = served.name
            self.metrics.track_pending(name, served.version, lambda n=name: queue.items_where(lambda k: k[0] == n))
        self.servicer = LatentEditServicer(models, self.runner, self.metrics, config.max_items_per_request)
        self.health = HealthServicer()
        limit = config.max_message_mb * 1024 * 1024
        self.grpc = grpc.aio.server(options=[("grpc.max_send_message_length", limit),
                                             ("grpc.max_receive_message_length", limit),
                                             ("grpc.so_reuseport", 0)])
        pb_grpc.add_LatentEditServiceServicer_to_server(self.servicer, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (pb.DESCRIPTOR.services_by_name["LatentEditService"].full_name, HEALTH_SERVICE,
             reflection.SERVICE_NAME), self.grpc)
        address = f"{config.host}:{config.port}"
        try:
            self.port = self.grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise ValueError(f"cannot bind {address} ({exc}); is another server on that port? pass --port "
                             "with a free port (0 = any)") from None
        self.metrics_port: int | None = None
        self._httpd = None
        self._runner_task: asyncio.Task | None = None

    def _compute(self, batch: Batch):
        return self.models[batch.key[0]].compute(batch)

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
        await self.grpc.start()
        self._runner_task = asyncio.create_task(self.runner.run())
        if self.config.warmup:
            loop = asyncio.get_running_loop()
            start = time.perf_counter()
            for served in self.models.values():
                await loop.run_in_executor(self.runner.executor, served.warm_up, self.config.max_batch_size)
            log.info("warm-up of %d model(s) x %d buckets took %.2f s", len(self.models),
                     len(bucket_sizes(self.config.max_batch_size)), time.perf_counter() - start)
        if not self.servicer.draining:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def drain(self, grace_s: float | None = None) -> bool:
        """NOT_SERVING, refuse new work, wait for accepted work (≤ grace), stop. True if nothing was cut off."""
        grace_s = self.config.grace_s if grace_s is None else grace_s
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace_s
        while (self.servicer.inflight > 0 or not self.runner.idle) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        clean = self.servicer.inflight == 0 and self.runner.idle
        await self.stop(grace_s=max(0.05, deadline - time.monotonic()))
        return clean

    async def stop(self, grace_s: float = 0.0) -> None:
        await self.grpc.stop(grace_s)
        self.runner.stop()
        if self._runner_task is not None:
            self._runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner_task
        self.runner.executor.shutdown(wait=False, cancel_futures=True)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


def create_server(config: ServeConfig, models: dict[str, ServedModel] | None = None,
                  compute_wrapper: Callable | None = None) -> tuple[EditServer, int]:
    """Load models (unless given) and bind; returns ``(server, bound_port)``. Call inside the event loop."""
    models = models if models is not None else load_models(config.models, config.engine)
    server = EditServer(config, models, compute_wrapper)
    return server, server.port


async def serve_until_signal(config: ServeConfig, announce=print) -> int:
    """Run until SIGTERM/SIGINT, then drain within ``config.grace_s``. Exit code 0 if the drain was clean."""
    server, port = create_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    names = ", ".join(f"{m.name} {m.version} ({m.model.engine})" for m in server.models.values())
    metrics = f"http://{config.metrics_host}:{server.metrics_port}/metrics" if server.metrics_port else "off"
    announce(f"curvedit serve: SERVING {names} on {config.host}:{port}; metrics {metrics}; "
             f"max_batch_size={config.max_batch_size} max_queue_delay_ms={config.max_queue_delay_ms:g}")
    sys.stdout.flush()
    await stop.wait()
    announce(f"curvedit serve: draining (grace {config.grace_s:g} s)")
    clean = await server.drain()
    announce("curvedit serve: stopped" + ("" if clean else " (grace ran out; some work was cut off)"))
    return 0 if clean else 1
