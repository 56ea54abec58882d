"""The engine process of ``serve --workers N``: one per device, it holds the models and computes every batch,
batching across all front-end processes.

It runs an ``EngineCore`` (models, batcher, warm-up, repository) and listens on a Unix socket (``link``). Each
front end that connects gets the catalog of models (``catalog.to_catalog``), again whenever a model becomes ready
or a version comes or goes; then it sends work chunk by chunk (``SUBMIT``, at most ``max_batch_size`` rows each)
and gets each chunk's rows back (``RESULT``, with the chunk's queue wait and the engine's backlog, which the
front ends' admission control reads). A front end that disconnects (it was killed, or it drained) has its work
that has not started dropped. Metrics: the engine's own families (batches, queue depth, readiness, routes) on an
ephemeral loopback port, which the supervisor adds to the front ends' in one scrape (``workers``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time

import numpy as np

from curvedit.service import link
from curvedit.service.catalog import to_catalog
from curvedit.service.config import ServeConfig
from curvedit.service.errors import ServiceError, not_found, to_status
from curvedit.service.requests import SeedLatents
from curvedit.service.supervised import detach

log = logging.getLogger(__name__)


def encode_error(exc: BaseException) -> str:
    """A failure as a ``RESULT``'s text: status code, pushback, rejection reason, message."""
    code, message, pushback = to_status(exc)
    reason = exc.reason if isinstance(exc, ServiceError) else ""
    return link.SEP.join((str(code.value[0]), str(pushback), reason, message))


class EngineLinks:
    """The engine's side of every front-end connection."""

    def __init__(self, core, config: ServeConfig):
        self.core, self.config = core, config
        self.links: set[link.Link] = set()
        self._calls: set[asyncio.Task] = set()
        self.started = False  # core.start() returned: what makes an in-process server say SERVING

    def catalog(self) -> str:
        models = [to_catalog(m, self.config.max_items_per_request)  # every loaded version (values(): newest only)
                  for name in self.core.models for m in self.core.models.versions(name)]
        repository = self.core.repository
        state = None if repository is None else {
            "index": repository.index(), "unloaded": sorted(repository.unloaded),
            "failures": [[n, v, r] for (n, v), (_, r) in repository.failures.items()]}
        return json.dumps({"models": models, "repository": state, "pid": os.getpid(), "started": self.started})

    def broadcast(self) -> None:
        text = self.catalog()
        for peer in list(self.links):
            peer.send(link.CATALOG, 0, text)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = link.Link(reader, writer)
        self.links.add(peer)
        peer.send(link.CATALOG, 0, self.catalog())
        pending: dict[int, object] = {}
        try:
            while True:
                message = await peer.read()
                if message.kind == link.SUBMIT:
                    self._submit(peer, message, pending)
                elif message.kind == link.CANCEL:
                    entry = pending.pop(message.id, None)
                    if entry is not None:
                        entry.future.cancel()
                elif message.kind == link.CALL:
                    task = asyncio.create_task(self._call(peer, message))
                    self._calls.add(task)
                    task.add_done_callback(self._calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front end is gone (drained, or killed): what it waits for is nobody's now
        finally:
            self.links.discard(peer)
            for entry in pending.values():
                entry.future.cancel()
            peer.close()

    def _submit(self, peer: link.Link, message: link.Message, pending: dict) -> None:
        model, editor, kind, deadline, seeded = message.text.split(link.SEP)
        x, amounts, seeds = message.arrays
        try:
            if not self.core.models.has_key(model):
                raise not_found(f"model {model} is not loaded in the engine (it was unloaded); ask ListModels")
            if seeded == "1":
                x = SeedLatents(self.core.models.by_key(model).sample_latents, x.tolist())
            entries = self.core.runner.submit((model, editor, kind), x, amounts if amounts.size else None,
                                              float(deadline) if deadline else None, None,
                                              seeds if seeds.size else None)
        except Exception as exc:
            peer.send(link.RESULT, message.id, encode_error(exc))
            return
        (entry,) = entries  # front ends send chunks of at most max_batch_size rows
        pending[message.id] = entry
        entry.future.add_done_callback(lambda future: self._done(peer, message.id, entry, future, pending))

    def _done(self, peer: link.Link, id: int, entry, future, pending: dict) -> None:
        pending.pop(id, None)
        if future.cancelled():
            return  # its front end cancelled it (or is gone)
        runner = self.core.runner
        stats = np.array([(entry.started or entry.arrival) - entry.arrival,
                          runner.backlog_seconds(self.core.cost, runner.clock()), len(runner.queue)], np.float64)
        error = future.exception()
        if error is not None:
            peer.send(link.RESULT, id, encode_error(error), [stats])
            return
        peer.send(link.RESULT, id, "", [*future.result(), stats])

    async def _call(self, peer: link.Link, message: link.Message) -> None:
        try:
            request = json.loads(message.text)
            reply, arrays = await self._answer(request, message.arrays)
            peer.send(link.REPLY, message.id, json.dumps(reply), arrays)
        except Exception as exc:
            peer.send(link.ERROR_REPLY, message.id, encode_error(exc))

    async def _answer(self, request: dict, arrays: list) -> tuple[dict, list]:
        call = request["call"]
        if call == "translate":
            served = self.core.models.by_key(request["key"])
            return {}, [await served.translate(np.ascontiguousarray(arrays[0]), request["to"])]
        if call == "sample":
            served = self.core.models.by_key(request["key"])
            return {}, [np.ascontiguousarray(served.sample_latents(arrays[0].tolist()), np.float32)]
        repository = self.core.repository
        if call == "load":
            await _repository_call(repository.load, request["name"])
        elif call == "unload":
            await _repository_call(repository.unload, request["name"])
        else:
            raise ValueError(f"unknown engine call {call!r}")
        self.broadcast()
        return {}, []


async def _repository_call(method, name: str) -> None:
    """A repository load/unload; its ``LookupError``/``RuntimeError`` go back as they are raised (the front end's
    ``oip.Inference`` maps them as the in-process server does)."""
    try:
        await method(name)
    except LookupError as exc:
        raise not_found(str(exc)) from None
    except RuntimeError as exc:
        import grpc

        raise ServiceError(grpc.StatusCode.INTERNAL, str(exc)) from None


def engine_main(config: dict, socket_path: str, conn) -> None:
    """The engine process's entry point (``multiprocessing`` spawn): ``conn`` tells the supervisor how it goes."""
    from curvedit.service.logs import setup_logging

    config = ServeConfig(**config)
    setup_logging(config.log_format)
    asyncio.run(_engine(config, socket_path, conn))


async def _engine(config: ServeConfig, socket_path: str, conn) -> None:
    from curvedit.service.engine_core import EngineCore
    from curvedit.service.metrics import ServerMetrics
    from curvedit.service.models import WarmUpStopped, load_models

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    detach(conn, stop)
    started = time.perf_counter()
    try:
        models = None if config.model_repository else load_models(config.models, config.engine,
                                                                   config.expect_digests, config.ort_threads)
    except ValueError as exc:  # a bundle that is missing or broken: the supervisor says it, once
        conn.send({"state": "failed", "error": str(exc)})
        raise SystemExit(1) from None
    metrics = ServerMetrics()
    core = EngineCore(config, models, metrics)
    core.freeze_heap = True
    links = EngineLinks(core, config)
    core.on_change = links.broadcast
    server = await asyncio.start_unix_server(links.handle, socket_path)
    httpd, metrics_port = metrics.serve_http("127.0.0.1", 0)
    conn.send({"state": "listening", "metrics_port": metrics_port, "pid": os.getpid()})
    log.info("engine process %d: %d model(s) loaded in %.1f s, listening on %s", os.getpid(),
             len(core.models), time.perf_counter() - started, socket_path)
    starting = asyncio.create_task(core.start())
    waiting = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is None:
        links.started = True
        links.broadcast()
        conn.send({"state": "ready"})
        await stop.wait()
    elif starting.done():
        conn.send({"state": "failed", "error": str(starting.exception())})
        log.error("engine process failed to start: %s", starting.exception())
    core.stop_warming()
    starting.cancel()
    import contextlib

    with contextlib.suppress(asyncio.CancelledError, WarmUpStopped):
        await starting
    server.close()
    for peer in list(links.links):
        peer.close()
    await core.stop()
    httpd.shutdown()
    log.info("engine process %d stopped", os.getpid())
