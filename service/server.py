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
import gc
import logging
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from curvedit.engines.route_cache import RouteCache
from curvedit.inference import grpc_service_pb2_grpc as oip_grpc
from curvedit.service import security, wire
from curvedit.service.admission import Admission, CostModel
from curvedit.service.batcher import Batch, BatchQueue, Entry
from curvedit.service.config import ServeConfig
from curvedit.service.errors import ShutDown, WarmingUp
from curvedit.service.metrics import INFERENCE_SERVICE, SERVICE, ServerMetrics
from curvedit.service.model_set import ModelSet
from curvedit.service.models import ServedModel, WarmUpStopped, load_models, serving_model
from curvedit.service.oip import Inference
from curvedit.service.oip_grpc import InferenceServicer
from curvedit.service.oip_http import HttpFront
from curvedit.service.repository import ModelRepository
from curvedit.service.rpc_metrics import RpcMetrics
from curvedit.service.runner import BatchRunner
from curvedit.service.servicer import LatentEditServicer
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# gRPC core silently CANCELs calls beyond this many waiting for the application; admission control answers them
# instead (RESOURCE_EXHAUSTED with pushback, counted), so core's own limit is set out of the way.
CORE_PENDING_LIMIT = 1 << 20
HOLD_S = 0.1  # how long the last refusals of a drain are held so gRPC core can stop without cancelling calls


def settle_heap() -> None:
    """Collect the garbage of loading (and of versions retired since the last call), then freeze what is alive.

    CPython's full collection walks every tracked object. Loaded with torch, ONNX Runtime and a model, a server
    holds about 180,000 and one full collection takes ~50 ms on the development machine; under load the objects
    of in-flight requests reach the oldest generation fast enough that one ran every ~1.5 s at c = 64 (16 in a
    25 s run), each a 50 ms stall of every request. Frozen objects are skipped (and never collected), so the
    collections that remain walk only what serving made. Measured on the d = 512 flow at c = 64 (one `/tmp`
    A/B, 6 rounds of 3 s): p99 97.3 ms not frozen, 45.3 ms frozen; the no-op server's 21.5 ms.
    """
    start = time.perf_counter()
    gc.unfreeze()  # a retired version's objects in reference cycles are collectable again
    gc.collect()
    gc.freeze()
    log.info("heap settled: %d objects frozen after a %.0f ms full collection", gc.get_freeze_count(),
             1000 * (time.perf_counter() - start))


class _BatchMetrics:
    """The batcher's observer: executed batches and dropped items → metrics (``ServerMetrics`` never raises)."""

    def __init__(self, models: ModelSet, metrics: ServerMetrics):
        self.models, self.metrics = models, metrics

    def dropped(self, entry: Entry, reason: str) -> None:
        served = self.models.by_key(entry.key[0])
        self.metrics.dropped(served.name, served.version_label, reason, entry.n)

    def executed(self, batch: Batch, compute_s: float, error: BaseException | None) -> None:
        served = self.models.by_key(batch.key[0])
        if batch.steps:
            self.metrics.sampled(served.name, served.version_label, batch.steps)
        if error is None:
            padded = served.padded_rows(batch.size)
            self.metrics.batch(served.name, served.version_label, batch.size, padded, batch.reason, batch.stages)


class EditServer:
    """One server: the grpc.aio server, the batcher, health, metrics. Create it with ``create_server``."""

    def __init__(self, config: ServeConfig, models: dict[str, ServedModel],
                 compute_wrapper: Callable | None = None):
        self.config = config
        self.models = models = ModelSet(models)
        self.metrics = ServerMetrics()
        compute = self._compute if compute_wrapper is None else compute_wrapper(self._compute)
        queue = BatchQueue(config.max_batch_size, config.max_queue_delay_s, config.max_queue_size)
        self.cost = CostModel(config.max_batch_size)
        self.runner = BatchRunner(queue, compute, _BatchMetrics(models, self.metrics), cost=self.cost)
        self.admission = Admission(self.runner, self.cost, config.max_concurrent_requests)
        for served in models.values():
            self._track(served)
        self.servicer = LatentEditServicer(models, self.runner, self.admission, self.metrics,
                                           config.max_items_per_request)
        self.servicer.log_requests = config.log_requests
        self.ready = False  # warm-up done and not draining: OIP readiness (health says SERVING then too)
        self.freeze_heap = False  # the process is this server's: settle_heap after warm-up and each load
        self.repository = None if not config.model_repository else ModelRepository(
            config.model_repository, models, self._load_version, self.activate, self.deactivate,
            self.metrics.load_failed, keep=config.repository_versions)
        self._retiring: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self._warming: asyncio.Task | None = None  # the models after the first, warming one by one
        self._stop_warmup = threading.Event()  # set: every warm-up in progress stops between two calls
        self._warm_times: list[float] = []  # seconds each finished warm-up took (the wait a refusal names)
        self.route_cache = RouteCache(config.cache_dir) if config.cache_dir else None
        self.servicer.not_warm = self._not_warm
        self.on_ready: Callable | None = None  # called with each model that finishes warming up
        self.on_all_ready: Callable | None = None  # called once the models after the first are warm
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
            ("grpc.so_reuseport", 0), ("grpc.server.max_pending_requests", CORE_PENDING_LIMIT),
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
        self._runner_task: asyncio.Task | None = None

    def _compute(self, batch: Batch):
        return self.models.by_key(batch.key[0]).compute(batch)

    def _track(self, served: ServedModel) -> None:
        """Export the version's queue depth (read at scrape time) and that it is loaded."""
        key = served.key
        self.metrics.track_pending(served.name, served.version_label,
                                   lambda: self.runner.queue.items_where(lambda k: k[0] == key))
        self.metrics.model_loaded(served.name, served.version_label, served.version)

    # -- model versions coming and going (a model repository) -------------------------------------------------
    def _load_version(self, name: str, version: int, path) -> ServedModel:
        """On the repository's thread: read and check the bundle (every sha256) and build its engine."""
        model = serving_model(path, self.config.engine, None, self.config.ort_threads)
        return ServedModel(model, name=name, repository_version=version)

    async def activate(self, served: ServedModel) -> None:
        """Warm ``served`` up on its own compute thread, then let it take requests (the newest of its name)."""
        self.metrics.warming(served.name, served.version_label)
        try:
            await self._warm(served)
        except BaseException:
            if not self.models.has_key(served.key) and served.key in self.runner.executors:
                self.runner.executors.pop(served.key).shutdown(wait=False)  # its compute thread serves nothing
            raise
        self.models.add(served)
        self._track(served)
        if self.freeze_heap:
            settle_heap()

    async def _warm(self, served: ServedModel, place: str = "") -> None:
        """Run ``served``'s warm-up on its compute thread (routes from the cache when it has them), then mark it
        ready: it takes requests from now on. ``place`` ("2 of 7") goes into the log lines."""
        if self.config.warmup:
            loop = asyncio.get_running_loop()
            start = time.perf_counter()
            log.info("warming up %s%s", served.name, f" ({place})" if place else "")
            timings = await loop.run_in_executor(self.runner.executor_for(served.key), served.warm_up,
                                                 self.config.max_batch_size, self.route_cache, self._stop_warmup)
            if timings:
                served.seed_costs(self.cost, timings)
            served.warmup_s = time.perf_counter() - start
            self._warm_times.append(served.warmup_s)
            routes = getattr(served.model.runtime, "calibrated_from", "")
            log.info("%s ready after a %.1f s warm-up%s%s", served.name, served.warmup_s,
                     f" ({place})" if place else "", f"; engine routes {routes}" if routes else "")
        served.ready = True
        self.metrics.engine(served.name, served.version_label, served.fallbacks(), served.routes())
        self.metrics.warmed(served.name, served.version_label, served.warmup_s or 0.0)
        if self.on_ready is not None:
            self.on_ready(served)

    def _not_warm(self, served: ServedModel) -> WarmingUp:
        """The refusal of a request to ``served`` while it warms up: how many wait before it, and for how long."""
        failure = getattr(served, "warmup_failure", "")
        waiting = [m for m in self.models.values() if not m.ready and not getattr(m, "warmup_failure", "")]
        ahead = next((i for i, m in enumerate(waiting) if m is served), 0)
        typical = statistics.median(self._warm_times) if self._warm_times else None
        return WarmingUp(served.name, ahead, None if typical is None else typical * (ahead + 1), failure)

    async def _warm_the_others(self, others: list[ServedModel], total: int) -> None:
        """After the default model: the others, one at a time (their calibrations would time each other)."""
        start = time.perf_counter()
        for i, served in enumerate(others, start=total - len(others) + 1):
            try:
                await self._warm(served, f"{i} of {total}")
            except WarmUpStopped:
                return
            except Exception as exc:  # one bad model must not stop the others (nor the server)
                served.warmup_failure = f"{type(exc).__name__}: {exc}"
                log.exception("warm-up of %s failed; it answers UNAVAILABLE, the other models serve", served.name)
        log.info("all %d models ready %.1f s after the first", total, time.perf_counter() - start)
        if self.on_all_ready is not None:
            self.on_all_ready()
        if self.freeze_heap:
            settle_heap()

    async def warmed(self) -> None:
        """Return once every model has warmed up (or failed to): ``ready_when="default"`` serves before that."""
        if self._warming is not None:
            await asyncio.shield(self._warming)

    async def deactivate(self, served: ServedModel) -> None:
        """Stop new requests reaching ``served``; forget it once its queued and computing work is done."""
        self.models.retire(served)
        self.metrics.model_unloaded(served.name, served.version_label, served.version)
        task = asyncio.create_task(self._forget_when_done(served))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _forget_when_done(self, served: ServedModel) -> None:
        key = served.key
        await asyncio.sleep(HOLD_S)  # handlers that looked it up before the swap have queued by now
        while self.runner.queue.items_where(lambda k: k[0] == key) or key in self.runner.running:
            await asyncio.sleep(0.01)
        self.models.forget(served)
        if self.models.has_key(key):  # the same version was loaded again meanwhile: its thread is in use
            return
        self.metrics.model_forgotten(served.name, served.version_label)
        executor = self.runner.executors.pop(key, None)
        if executor is not None:
            executor.shutdown(wait=False)

    async def _poll(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.repository.poll()
            except Exception:  # a bad scan must not stop polling (each version's failure is handled inside)
                log.exception("model repository poll failed")

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
                self.http_port = await self.http.start(self.config.host, self.config.http_port)
            except OSError as exc:
                raise ValueError(f"cannot serve HTTP/REST on {self.config.host}:{self.config.http_port} ({exc}); "
                                 "pass --http-port with a free port (0 = any, -1 = off)") from None
        await self.grpc.start()
        self._runner_task = asyncio.create_task(self.runner.run())
        if self.repository is not None:
            await self.repository.poll()
            if not self.models:
                failures = "; ".join(f"{n} version {v}: {r}"
                                     for (n, v), (_, r) in self.repository.failures.items())
                raise ValueError(f"no model of repository {self.config.model_repository} loaded ("
                                 f"{failures or 'no DIR/<name>/<version>/ directories'}); fix or add a bundle")
            if self.config.repository_poll_s > 0:
                self._poller = asyncio.create_task(self._poll(self.config.repository_poll_s))
        else:
            models = list(self.models.values())
            for served in models:
                self.metrics.warming(served.name, served.version_label)
            total = len(models)
            if models:
                await self._warm(models[0], f"1 of {total}, the default" if total > 1 else "")
            if total > 1:
                if not self.config.warmup:
                    for served in models[1:]:
                        await self._warm(served)
                else:
                    self._warming = asyncio.create_task(self._warm_the_others(models[1:], total))
                    if self.config.ready_when == "all":
                        await self.warmed()
        if self.freeze_heap and self.repository is None:  # a repository's versions settled as each loaded
            settle_heap()
        if not self.servicer.draining:
            self.ready = True
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def drain(self, grace_s: float | None = None) -> bool:
        """NOT_SERVING, refuse new work, wait for accepted work (≤ grace), stop. True if nothing was cut off."""
        grace_s = self.config.grace_s if grace_s is None else grace_s
        self.stop_warming()
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

    def stop_warming(self) -> None:
        """Every warm-up in progress or still to come stops (between two calls: within milliseconds)."""
        self._stop_warmup.set()
        if self._warming is not None:
            self._warming.cancel()

    async def stop(self, grace_s: float = 0.0) -> None:
        self.stop_warming()
        for task in (self._poller, *self._retiring):
            if task is not None:
                task.cancel()
        if self.repository is not None:
            self.repository.close()
        await self.grpc.stop(grace_s)
        if self.servicer.hold is not None and not self.servicer.hold.done():
            self.servicer.hold.set_result(None)
        self.runner.stop()
        if self._runner_task is not None:
            self._runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner_task
        self.runner.shutdown()
        await self.runner.cancel_batches()
        await self.http.stop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


def create_server(config: ServeConfig, models: dict[str, ServedModel] | None = None,
                  compute_wrapper: Callable | None = None) -> tuple[EditServer, int]:
    """Load models (unless given) and bind; returns ``(server, bound_port)``. Call inside the event loop."""
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
        server.on_ready = lambda served: (bar.update(1), bar.set_postfix_str(served.name))
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
            server.on_all_ready = bar.close
    await stop.wait()
    announce(f"curvedit serve: draining (grace {config.grace_s:g} s)")
    clean = await server.drain()
    announce("curvedit serve: stopped" + ("" if clean else " (grace ran out; some work was cut off)"))
    return 0 if clean else 1
