"""A front-end process of ``serve --workers N``: parse, validate, authenticate, admit and answer; compute
nothing. Its modules import neither torch nor triton (``tests/test_workers.py`` checks), so it starts in about a
second and stays small.

It runs the same ``EditServer`` as the in-process server — gRPC (native API, Open Inference Protocol, health,
reflection), HTTP/REST, tokens, TLS, admission, metrics — on ports it shares with the other front ends
(``SO_REUSEPORT``: the kernel spreads connections over them), before a ``RemoteCore`` instead of an engine: its
``RemoteModel``s come from the engine's catalog, and its ``RemoteRunner`` sends each request's chunks to the
engine process (``link``) and resolves them with the rows that come back. If the engine goes away, every request
in flight fails with UNAVAILABLE, health says NOT_SERVING, and the front end reconnects until an engine is back
(the supervisor restarts it), then says SERVING again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import time

import grpc
import numpy as np

from curvedit.model_spec import ModelSpec
from curvedit.service import link
from curvedit.service.admission import CostModel
from curvedit.service.catalog import ModelEntry
from curvedit.service.config import ServeConfig
from curvedit.service.errors import ServiceError, WarmingUp
from curvedit.service.model_set import ModelSet
from curvedit.service.requests import ImageFiles, SeedLatents
from curvedit.service.runner import fail_futures
from curvedit.service.supervised import detach
from curvedit.v1 import latent_edit_pb2 as pb

log = logging.getLogger(__name__)
CODES = {code.value[0]: code for code in grpc.StatusCode}
CONNECT_TIMEOUT_S = 600.0  # how long a front end waits for its first engine (it loads and warms the models)


class EngineGone(ServiceError):
    reason = "engine_unavailable"

    def __init__(self):
        super().__init__(grpc.StatusCode.UNAVAILABLE, "the engine process stopped before this request finished "
                         "(it is being restarted); retry in a second", 1000)


def decode_error(text: str) -> ServiceError:
    code, pushback, reason, message = text.split(link.SEP, 3)
    error = ServiceError(CODES.get(int(code), grpc.StatusCode.UNKNOWN), message, int(pushback))
    error.reason = reason
    return error


class RemoteModel(ModelEntry):
    """A model the engine process computes, as its catalog entry describes it (``catalog.to_catalog``)."""

    def __init__(self, data: dict, core: RemoteCore):
        super().__init__(ModelSpec.from_dict(data["spec"]), data["name"], data["repository_version"])
        self.core = core
        self.update(data)

    def update(self, data: dict) -> None:
        self.ready, self.warmup_failure = data["ready"], data["warmup_failure"]
        self._engine, self._info = data["engine"], bytes.fromhex(data["info"])

    @property
    def engine(self) -> str:
        return self._engine

    def info(self, max_items: int) -> pb.ModelInfo:
        info = pb.ModelInfo.FromString(self._info)
        info.max_items_per_request = max_items
        return info

    def sample_latents(self, seeds):  # the engine samples: RemoteRunner sends the seeds themselves
        raise NotImplementedError("seeds are sampled in the engine process")

    async def prior(self, seeds: list[int]) -> np.ndarray:
        _, arrays = await self.core.call({"call": "sample", "key": self.key}, [np.asarray(seeds, np.int64)])
        return np.array(arrays[0])

    async def translate(self, z: np.ndarray, to: str) -> np.ndarray:
        _, arrays = await self.core.call({"call": "translate", "key": self.key, "to": to}, [z])
        return np.array(arrays[0])


class _Chunk:
    """One chunk of a request sent to the engine: what ``servicer._run`` awaits (``future``, queue times)."""

    __slots__ = ("arrival", "finish", "future", "n", "start", "started")

    def __init__(self, n: int, arrival: float, future: asyncio.Future, start: int, finish):
        self.n, self.arrival, self.future, self.start, self.finish = n, arrival, future, start, finish
        self.started: float | None = None


class _EngineQueue:
    """What admission control reads of the queue: the engine's, across every front end, as its last answer said,
    plus what this front end has sent since that answer. (Not plus everything it has outstanding: those items
    are in the engine's count already, and counting them twice refused requests with room to spare.)"""

    def __init__(self, config: ServeConfig, runner: RemoteRunner):
        self.max_batch_size, self.max_queue_size = config.max_batch_size, config.max_queue_size
        self.max_queue_delay_s = config.max_queue_delay_s
        self.runner = runner

    def __len__(self) -> int:
        return int(self.runner.engine_queued) + self.runner.unreported

    def items_where(self, predicate) -> int:
        return 0  # queue depth is the engine's metric (nv_inference_pending_request_count)


class RemoteRunner:
    """The ``runner.BatchRunner`` surface the servicer and admission use, over the link to the engine."""

    def __init__(self, config: ServeConfig):
        self.queue = _EngineQueue(config, self)
        self.clock = time.monotonic
        self.running: dict = {}  # nothing computes in a front end
        self.executors: dict = {}
        self.link: link.Link | None = None
        self.engine_backlog_s = 0.0
        self.engine_queued = 0.0
        self.outstanding = 0  # items sent and not answered
        self.unreported = 0  # items sent since the engine last said how many it has queued
        self._chunks: dict[int, _Chunk] = {}
        self._ids = itertools.count(1)

    def submit(self, key, z, amounts, deadline=None, finish=None, seeds=None) -> list[_Chunk]:
        if self.link is None or self.link.closed:
            raise EngineGone()
        model, editor, kind = key
        seeded = isinstance(z, SeedLatents)
        if seeded:
            z = np.asarray(z.seeds, np.int64)
        elif isinstance(z, ImageFiles):
            z = z.array()  # decoded here, in the front end (an unreadable file fails its own request)
        loop = asyncio.get_running_loop()
        now, m = self.clock(), self.queue.max_batch_size
        when = "" if deadline is None else repr(deadline)  # CLOCK_MONOTONIC: the same clock in every process
        text = link.SEP.join((model, editor, kind, when, "1" if seeded else ""))
        chunks = []
        for i in range(0, len(z), m):
            chunk = _Chunk(min(m, len(z) - i), now, loop.create_future(), i, finish)
            id = next(self._ids)
            self._chunks[id] = chunk
            self.outstanding += chunk.n
            self.unreported += chunk.n
            chunk.future.add_done_callback(lambda f, id=id: self._given_up(id, f))
            rows = [z[i : i + m], link.NONE if amounts is None else amounts[i : i + m],
                    link.NONE if seeds is None else seeds[i : i + m]]
            self.link.send(link.SUBMIT, id, text, rows)
            chunks.append(chunk)
        return chunks

    def _given_up(self, id: int, future: asyncio.Future) -> None:
        """A chunk's future done: answered (nothing to do), or cancelled here (tell the engine to drop it)."""
        chunk = self._chunks.pop(id, None)
        if chunk is not None:
            self.outstanding -= chunk.n
            if future.cancelled() and self.link is not None:
                self.link.send(link.CANCEL, id)

    def result(self, message: link.Message) -> None:
        chunk = self._chunks.pop(message.id, None)
        if message.arrays:
            wait, self.engine_backlog_s, self.engine_queued = message.arrays[-1].tolist()
            self.unreported = 0
        if chunk is None or chunk.future.done():
            return
        self.outstanding -= chunk.n
        if message.text:
            chunk.future.set_exception(decode_error(message.text))
            return
        chunk.started = chunk.arrival + wait
        rows = tuple(message.arrays[:-1])
        try:
            chunk.future.set_result(rows if chunk.finish is None else chunk.finish(rows, chunk.start))
        except Exception as exc:  # the finish (a non-finite edit, PNG encoding) failed this request alone
            chunk.future.set_exception(exc)

    def backlog_seconds(self, cost, now: float) -> float:
        return self.engine_backlog_s

    def make_room(self) -> None:
        pass  # the engine drops its stale entries itself

    @property
    def idle(self) -> bool:
        return not self._chunks

    def fail_all(self, error: Exception) -> int:
        chunks, self._chunks = list(self._chunks.values()), {}
        self.outstanding = self.unreported = 0
        return fail_futures([chunk.future for chunk in chunks], error)

    def stop(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    async def cancel_batches(self) -> None:
        pass


class RemoteRepository:
    """``repository.ModelRepository``'s read side from the engine's catalog; loads and unloads go to the
    engine."""

    def __init__(self, core: RemoteCore):
        self.core = core
        self.state = {"index": [], "unloaded": [], "failures": []}

    @property
    def unloaded(self) -> set[str]:
        return set(self.state["unloaded"])

    def failure(self, name: str, version: int) -> str | None:
        return next((r for n, v, r in self.state["failures"] if n == name and v == version), None)

    def index(self) -> list[dict]:
        return list(self.state["index"])

    async def load(self, name: str) -> None:
        await self.core.call({"call": "load", "name": name})

    async def unload(self, name: str) -> None:
        await self.core.call({"call": "unload", "name": name})


class RemoteCore:
    """The ``engine_core.EngineCore`` surface a front end's ``EditServer`` uses, over the link to the engine."""

    def __init__(self, config: ServeConfig, socket_path: str):
        self.config, self.socket_path = config, socket_path
        self.models = ModelSet()
        self.runner = RemoteRunner(config)
        self.cost = CostModel(config.max_batch_size)
        self.repository = RemoteRepository(self) if config.model_repository else None
        self.freeze_heap = False
        self.on_ready = self.on_all_ready = self.on_change = None
        self.on_engine = None  # called with True/False as the engine comes and goes (the server's health)
        self.metrics = None  # the server's ServerMetrics (series made for each model from the catalog)
        self._calls: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task | None = None
        self._serving_ready = asyncio.Event()
        self._engine_was_gone = False
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()

    # -- the engine's catalog -----------------------------------------------------------------------------------
    def _catalog(self, text: str) -> None:
        data = json.loads(text)
        seen = set()
        for entry in data["models"]:
            version = entry["repository_version"]
            key = f"{entry['name']}/{version}" if version else entry["name"]
            seen.add(key)
            if self.models.has_key(key):
                self.models.by_key(key).update(entry)
                continue
            model = RemoteModel(entry, self)
            self.models.add(model)
            if self.metrics is not None:
                self.metrics.model_series(model.name, model.version_label)
        for served in list(self.models.values()):
            if served.key not in seen:
                self.models.retire(served)
                self.models.forget(served)
        if self.repository is not None and data["repository"] is not None:
            self.repository.state = data["repository"]
        # SERVING when an in-process server would: once the engine's start is done (its default model warm, or
        # every model with ready_when="all", or every repository version loaded).
        if data["started"] and not self._serving_ready.is_set():
            self._serving_ready.set()
            if self._engine_was_gone:
                self._engine_was_gone = False
                log.info("front end %d: the engine process is back", os.getpid())
                if self.on_engine is not None:
                    task = asyncio.create_task(self.on_engine(True))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    # -- the connection -----------------------------------------------------------------------------------------
    async def _connect(self, timeout: float) -> link.Link:
        end = time.monotonic() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=1 << 22)
                return link.Link(reader, writer)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > end:
                    raise ValueError(f"no engine process answers on {self.socket_path} after {timeout:g} s"
                                     ) from None
                await asyncio.sleep(0.05)

    async def start(self) -> None:
        """Connect to the engine and wait until it has started (its default model warm; every model with
        ``ready_when="all"``); the server then says SERVING."""
        self.runner.link = await self._connect(CONNECT_TIMEOUT_S)
        self._reader = asyncio.create_task(self._read_forever())
        await self._serving_ready.wait()

    async def _read_forever(self) -> None:
        while not self._stopping:
            peer = self.runner.link
            try:
                while True:
                    message = await peer.read()
                    if message.kind == link.RESULT:
                        self.runner.result(message)
                    elif message.kind == link.CATALOG:
                        self._catalog(message.text)
                    elif message.kind in (link.REPLY, link.ERROR_REPLY):
                        future = self._calls.pop(message.id, None)
                        if future is not None and not future.done():
                            if message.kind == link.ERROR_REPLY:
                                future.set_exception(decode_error(message.text))
                            else:
                                future.set_result((json.loads(message.text), message.arrays))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            if self._stopping:
                return
            await self._engine_gone(peer)

    async def _engine_gone(self, peer: link.Link) -> None:
        """The engine went away: fail what is in flight (UNAVAILABLE), NOT_SERVING, reconnect (SERVING again
        once the new engine's catalog says its default model is warm)."""
        peer.close()
        self.runner.link = None
        failed = self.runner.fail_all(EngineGone())
        for future in self._calls.values():
            if not future.done():
                future.set_exception(EngineGone())
        self._calls.clear()
        log.warning("front end %d: the engine process went away; %d request chunk(s) in flight fail with "
                    "UNAVAILABLE; reconnecting", os.getpid(), failed)
        self._serving_ready.clear()
        self._engine_was_gone = True
        if self.on_engine is not None:
            await self.on_engine(False)
        self.runner.link = await self._connect(CONNECT_TIMEOUT_S)  # SERVING again with its catalog, above

    async def call(self, request: dict, arrays=()) -> tuple[dict, list]:
        """A request to the engine other than a batch (a translation, a repository load) and its reply."""
        peer = self.runner.link
        if peer is None or peer.closed:
            raise EngineGone()
        id = next(self._ids)
        future = self._calls[id] = asyncio.get_running_loop().create_future()
        peer.send(link.CALL, id, json.dumps(request), list(arrays))
        return await future

    # -- the rest of the core's surface -------------------------------------------------------------------------
    def not_warm(self, served: ModelEntry) -> WarmingUp:
        return WarmingUp(served.name, 0, None, served.warmup_failure)

    def stop_warming(self) -> None:
        pass

    async def warmed(self) -> None:
        pass

    async def stop(self) -> None:
        self._stopping = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.runner.link is not None:
            self.runner.link.close()


def frontend_main(config: dict, socket_path: str, index: int, conn) -> None:
    """A front-end process's entry point (``multiprocessing`` spawn)."""
    from curvedit.service.logs import setup_logging

    config = ServeConfig(**config)
    setup_logging(config.log_format)
    asyncio.run(_frontend(config, socket_path, index, conn))


async def _frontend(config: ServeConfig, socket_path: str, index: int, conn) -> None:
    from grpc_health.v1 import health_pb2

    from curvedit.service.metrics import ServerMetrics
    from curvedit.service.server import EditServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    detach(conn, stop)
    metrics = ServerMetrics()
    core = RemoteCore(config, socket_path)
    core.metrics = metrics
    try:
        server = EditServer(config, None, core=core, metrics=metrics, reuse_port=True)
    except ValueError as exc:  # bad settings (an unreadable certificate, ...): the supervisor says it, once
        conn.send({"state": "failed", "error": str(exc)})
        raise SystemExit(1) from None

    async def engine_state(up: bool) -> None:
        server.ready = up and not server.servicer.draining
        states = health_pb2.HealthCheckResponse
        await server._set_health(states.SERVING if server.ready else states.NOT_SERVING)

    core.on_engine = engine_state
    httpd, metrics_port = metrics.serve_http("127.0.0.1", 0)
    conn.send({"state": "listening", "metrics_port": metrics_port, "pid": os.getpid()})
    starting = asyncio.create_task(server.start())
    waiting = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is None:
        conn.send({"state": "serving"})
        await stop.wait()
        await server.drain()
    else:
        if starting.done():
            conn.send({"state": "failed", "error": str(starting.exception())})
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        await server.stop()
    httpd.shutdown()
