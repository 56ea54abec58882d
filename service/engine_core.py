"""The part of a server that computes: its models, the batcher, warm-up and the model repository.

``EngineCore`` owns the models (``model_set.ModelSet``), the ``runner.BatchRunner`` and its cost model, warms the
models up (the default first; the others after it, one at a time, see ``start``) and, with a model repository,
loads and retires versions while serving. The in-process server (``server.EditServer``) puts its gRPC and HTTP
fronts before one; ``serve --workers N`` runs one in the engine process (``engine_process``), where front-end
processes reach it over ``link``. A process that owns its heap (``freeze_heap``) freezes it (``settle_heap``) once
warm-up is done and after each version it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import statistics
import threading
import time
from collections.abc import Callable

from curvedit.engines.route_cache import RouteCache
from curvedit.service.admission import CostModel
from curvedit.service.batcher import Batch, BatchQueue, Entry
from curvedit.service.config import ServeConfig
from curvedit.service.errors import WarmingUp
from curvedit.service.metrics import ServerMetrics
from curvedit.service.model_set import ModelSet
from curvedit.service.models import ServedModel, WarmUpStopped, serving_model
from curvedit.service.repository import ModelRepository
from curvedit.service.runner import BatchRunner

log = logging.getLogger(__name__)
HOLD_S = 0.1  # how long a retired version waits for handlers that looked it up before the swap


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


class EngineCore:
    """Models, batcher, warm-up, repository: everything of a server but its fronts (see the module)."""

    def __init__(self, config: ServeConfig, models: dict[str, ServedModel] | None, metrics: ServerMetrics,
                 compute_wrapper: Callable | None = None):
        self.config, self.metrics = config, metrics
        self.models = models = ModelSet(models)
        compute = self._compute if compute_wrapper is None else compute_wrapper(self._compute)
        queue = BatchQueue(config.max_batch_size, config.max_queue_delay_s, config.max_queue_size)
        self.cost = CostModel(config.max_batch_size)
        self.runner = BatchRunner(queue, compute, _BatchMetrics(models, metrics), cost=self.cost)
        for served in models.values():
            self._track(served)
        self.freeze_heap = False  # the process is this server's: settle_heap after warm-up and each load
        self.repository = None if not config.model_repository else ModelRepository(
            config.model_repository, models, self._load_version, self.activate, self.deactivate,
            self._load_failed, keep=config.repository_versions)
        self._retiring: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self._runner_task: asyncio.Task | None = None
        self._warming: asyncio.Task | None = None  # the models after the first, warming one by one
        self._stop_warmup = threading.Event()  # set: every warm-up in progress stops between two calls
        self._warm_times: list[float] = []  # seconds each finished warm-up took (the wait a refusal names)
        self.route_cache = RouteCache(config.cache_dir) if config.cache_dir else None
        self.on_ready: Callable | None = None  # called with each model that finishes warming up
        self.on_all_ready: Callable | None = None  # called once the models after the first are warm
        self.on_change: Callable | None = None  # called when a model becomes ready, is loaded or retired

    async def start(self) -> None:
        """Run the batcher and bring the models up: a repository's versions (each warmed as it loads), else
        the default model warmed now and the others after it (awaited too with ``ready_when="all"``)."""
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
            return
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
        if self.freeze_heap:  # a repository's versions settled as each loaded
            settle_heap()

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
        self._changed()
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
        self._changed()

    def _load_failed(self, name: str, version: int) -> None:
        self._changed()  # the repository's index says why (front ends of `serve --workers` read it from there)
        self.metrics.load_failed(name, version)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def not_warm(self, served: ServedModel) -> WarmingUp:
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
        self._changed()
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

    def stop_warming(self) -> None:
        """Every warm-up in progress or still to come stops (between two calls: within milliseconds)."""
        self._stop_warmup.set()
        if self._warming is not None:
            self._warming.cancel()

    async def stop(self) -> None:
        """Stop warming and polling, and the batcher: queued work is not run (drain first for that)."""
        self.stop_warming()
        for task in (self._poller, *self._retiring):
            if task is not None:
                task.cancel()
        if self.repository is not None:
            self.repository.close()
        self.runner.stop()
        if self._runner_task is not None:
            self._runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner_task
        self.runner.shutdown()
        await self.runner.cancel_batches()
