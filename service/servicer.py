"""``LatentEditService``: turns messages into batcher work and results back into messages.

Each handler is admitted first (``admission``: draining, concurrency, queue space, deadline — all before any
decoding or sampling), then reads its request (``requests``: every input check, once), queues its items in the
``BatchRunner`` and awaits them. Sampling seeds, decoding image files, the finite check of each result and the
response's bytes (PNG encoding included) are made on the model's compute thread (``finish``); the event loop
only joins the parts. Every outcome, success or any exception, goes through ``_unary`` / ``_abort``: one place
for status codes (``errors.to_status``) and the pushback trailer. RPC counts and times (``grpc_server_*``) come
from the server's interceptor (``rpc_metrics``), not from here.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from curvedit.service import codec, requests
from curvedit.service.admission import Admission, Ticket
from curvedit.service.catalog import EDIT, EDIT_IMAGES, ENCODE, GENERATE, ModelEntry, from_images
from curvedit.service.errors import (
    PUSHBACK_KEY,
    Draining,
    WarmingUp,
    failure_reason,
    invalid,
    not_found,
    reject_reason,
    to_status,
)
from curvedit.service.logs import log_request
from curvedit.service.metrics import ServerMetrics
from curvedit.service.model_set import ModelSet
from curvedit.service.requests import Corrupt, SeedLatents, check_count, item_count
from curvedit.service.runner import BatchRunner
from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

_CLOSE = object()  # put into an open EditStream's answer queue at the end of a drain: end it with UNAVAILABLE
_IDS = itertools.count(1)
_PREFIX = f"{os.getpid():x}"


def _model_name(request) -> str:
    """The model a request names: native requests' ``model``, OIP's ``model_name`` (metadata RPCs: ``name``)."""
    for field in ("model", "model_name", "name"):
        name = getattr(request, field, None)
        if isinstance(name, str):
            return name
    return ""


async def latent_array(served, z) -> np.ndarray:
    """A request's latents as an array: seeds sampled by the model's prior (in the engine process when this is a
    front end of ``serve --workers``)."""
    return await served.prior(z.seeds) if isinstance(z, SeedLatents) else z


def request_id() -> str:
    """A short id for one request, unique within this server process (logged with INTERNAL errors)."""
    return f"{_PREFIX}-{next(_IDS):x}"


def image_payload(images: np.ndarray, fmt: int):
    """On the compute thread: uint8 ``[n, H, W, 3]`` → PNG files (a list) or raw bytes, for ``join_images``."""
    if fmt == pb.IMAGE_FORMAT_PNG:
        return codec.to_images(images, fmt).png
    return np.ascontiguousarray(images, dtype=np.uint8).tobytes()


def join_images(parts: list, n: int, image_shape, fmt: int) -> pb.Images:
    """The ``Images`` of a request from its chunks' payloads (``image_payload``)."""
    if fmt == pb.IMAGE_FORMAT_PNG:
        return pb.Images(format=fmt, png=[png for part in parts for png in part])
    return pb.Images(format=pb.IMAGE_FORMAT_RAW, shape=[n, *image_shape],
                     data=parts[0] if len(parts) == 1 else b"".join(parts))


def join_tensor(parts: list[bytes], shape: list[int]) -> pb.Tensor:
    return pb.Tensor(shape=shape, data=parts[0] if len(parts) == 1 else b"".join(parts))


def edit_finish(fmt: int | None):
    """The finish of an edit's chunks: refuse a non-finite result, make the response's bytes."""
    def finish(rows, start: int):
        requests.check_finite(rows[0], offset=start)
        latents = np.ascontiguousarray(rows[0], dtype=np.float32).tobytes()
        return latents, None if fmt is None else image_payload(rows[1], fmt)
    return finish


class LatentEditServicer(pb_grpc.LatentEditServiceServicer):
    def __init__(self, models: ModelSet, runner: BatchRunner, admission: Admission,
                 metrics: ServerMetrics, max_items: int):
        self.models = models
        self.runner = runner
        self.admission = admission
        self.metrics = metrics
        self.max_items = max_items
        self.streams: set[asyncio.Queue] = set()  # answer queues of the open EditStreams
        self.hold: asyncio.Future | None = None  # at the end of a drain: refusals wait for it (see server.drain)
        self.log_requests = False  # a log line per RPC (--log-requests; see logs)
        # served → the WarmingUp error for a model not warm yet (the server sets one that knows the wait)
        self.not_warm = lambda served: WarmingUp(served.name, 0, None)

    @property
    def draining(self) -> bool:
        return self.admission.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.admission.draining = value

    @property
    def inflight(self) -> int:
        """Admitted requests (unary RPCs and stream messages) not yet answered."""
        return self.admission.active

    def close_streams(self) -> None:
        """End every open EditStream with UNAVAILABLE once its answers are sent (the last step of a drain)."""
        for out in self.streams:
            out.put_nowait(_CLOSE)

    @property
    def default(self) -> str:
        """The default model's name (the first model; with a model repository, the first loaded)."""
        return next(iter(self.models), "")

    # -- plumbing -------------------------------------------------------------------------------------------
    def _model(self, name: str, repository_version: int = 0) -> ModelEntry:
        served = self.models.version(name or self.default, repository_version)
        if served is None:
            if (name or self.default) not in self.models:
                raise not_found(f"no model named {requests.short(name)}; this server has {list(self.models)} "
                                "(see ListModels)")
            loaded = [s.repository_version for s in self.models.versions(name or self.default)]
            raise not_found(f"model {name or self.default} has no loaded repository version {repository_version}; "
                            f"loaded: {[v for v in loaded if v]}; pass one of those, or 0 for the newest")
        return served

    def _serving(self, name: str, repository_version: int = 0) -> ModelEntry:
        """``_model``, warm: a model still warming up answers UNAVAILABLE naming it and the wait."""
        served = self._model(name, repository_version)
        if not served.ready:
            raise self.not_warm(served)
        return served

    def _count_failure(self, request, exc: BaseException, code: grpc.StatusCode) -> None:
        served = None
        if not isinstance(request, Corrupt) and code != grpc.StatusCode.NOT_FOUND:
            served = self.models.get(_model_name(request) or self.default)
            if served is not None:
                self.metrics.request_failed(served.name, served.version_label, failure_reason(code))
        reason = reject_reason(exc, code)
        if reason is not None:  # labelled by a model this server has, never by a name a client made up
            self.metrics.rejected(reason, served.name if served is not None else "")

    def _deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self.runner.clock() + remaining

    async def _unary(self, method: str, work, request, context: grpc.aio.ServicerContext, admit: bool = True):
        """Run ``work(request, ticket, method)`` with an admission ticket (``admit``: metadata and health
        answers need none) and turn whatever it raises into the RPC's status (then ``None`` is returned)."""
        ticket, rid, code, start = None, None, grpc.StatusCode.OK, time.perf_counter()  # rid: made if needed
        try:
            if isinstance(request, Corrupt):
                raise request.error
            if admit:
                ticket = self.admission.enter(self._deadline(context))
            return await work(request, ticket, method)
        except BaseException as exc:
            rid = request_id()
            code, message, pushback = to_status(exc, rid)
            if isinstance(exc, asyncio.CancelledError):
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0.02:
                    # gRPC cancels the handler when the deadline passes (its timer may fire a few ms early).
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                self._count_failure(request, exc, code)
                raise
            self._count_failure(request, exc, code)
            await self._abort(context, code, message, pushback)
        finally:
            if ticket is not None:
                ticket.leave()
            if self.log_requests:
                log_request(method, rid or request_id(), _model_name(request), code.name,
                            time.perf_counter() - start)

    async def _abort(self, context, code, message: str, pushback: int) -> None:
        """Make ``code`` (and the pushback trailer) the RPC's status, sent once the handler returns — not at once,
        as ``context.abort`` would send it: the server interceptor counts the RPC first, so a client that sees
        its status finds it counted. The caller returns right after. A drain's last refusals wait for its hold."""
        if code == grpc.StatusCode.UNAVAILABLE and self.hold is not None and not self.hold.done():
            await asyncio.shield(self.hold)
        if pushback:
            context.set_trailing_metadata(((PUSHBACK_KEY, str(pushback)),))
        context.set_code(code)
        context.set_details(message)

    async def _run(self, served: ModelEntry, key, x, amounts, ticket: Ticket, method: str, finish=None,
                   seeds: np.ndarray | None = None) -> list:
        """Queue ``x`` (``n`` rows, or a lazy input) under ``key`` (with per-row sampling ``seeds``); returns each
        chunk's result in order (its ``finish`` value, or its output rows)."""
        entries = self.runner.submit(key, x, amounts, ticket.deadline, finish, seeds)
        ticket.queued()
        if len(entries) == 1:
            results = [await entries[0].future]
        else:
            try:
                results = await asyncio.gather(*(e.future for e in entries))
            except BaseException:
                for e in entries:  # the request has failed: its other chunks are dropped before compute
                    e.future.cancel()
                raise
        # The SLO latency: from admission (the handler's first step) until every result is ready.
        seconds = ticket.admission.clock() - ticket.entered
        queue_s = max(e.started - e.arrival for e in entries)
        self.metrics.request_done(served.name, served.version_label, method, seconds, queue_s)
        return results

    # -- the RPCs -------------------------------------------------------------------------------------------
    async def ListModels(self, request, context):
        async def work(_request, _ticket, _method):
            return pb.ListModelsResponse(models=[m.info(self.max_items) for m in self.models.values()])
        return await self._unary("ListModels", work, request, context)

    async def GetModel(self, request, context):
        async def work(req, _ticket, _method):
            return self._model(req.name, req.repository_version).info(self.max_items)
        return await self._unary("GetModel", work, request, context)

    async def _edit(self, request: pb.EditRequest, ticket: Ticket, method: str) -> pb.EditResponse:
        served = self._serving(request.model, request.repository_version)
        editor = requests.editor(served, request.editor)
        fmt = requests.image_format(request.image_format)
        n = item_count(request, "latents", served.latent_dim)
        check_count(n, self.max_items)
        kind = EDIT_IMAGES if request.return_images else EDIT
        real = request.WhichOneof("input") == "images"
        if real:
            served.spec.require_encoder()
            kind = from_images(kind)
        key = (served.key, editor, kind)
        ticket.reserve(key, n)
        amounts = requests.amounts(served, editor, request, n)
        x = requests.images(served, request.images) if real else requests.latents(served, request)
        parts = await self._run(served, key, x, amounts, ticket, method,
                                edit_finish(fmt if request.return_images else None))
        response = pb.EditResponse(latents=join_tensor([p[0] for p in parts], [n, served.latent_dim]),
                                   model=served.name, model_version=served.version, id=request.id,
                                   repository_version=served.repository_version)
        if request.return_images:
            response.images.CopyFrom(join_images([p[1] for p in parts], n, served.spec.image_shape, fmt))
        return response

    async def Edit(self, request, context):
        return await self._unary("Edit", self._edit, request, context)

    async def Generate(self, request, context):
        async def work(req: pb.GenerateRequest, ticket, method):
            served = self._serving(req.model, req.repository_version)
            fmt = requests.image_format(req.image_format)
            n = item_count(req, "latents", served.latent_dim)
            check_count(n, self.max_items)
            key = (served.key, "", GENERATE)
            seeds = served.sampling_seeds(req.sampling_seed if req.HasField("sampling_seed") else None, n)
            ticket.reserve(key, n)
            parts = await self._run(served, key, requests.latents(served, req), None, ticket, method,
                                    lambda rows, _start: image_payload(rows[0], fmt), seeds)
            return pb.GenerateResponse(images=join_images(parts, n, served.spec.image_shape, fmt),
                                       model=served.name, model_version=served.version,
                                       repository_version=served.repository_version)
        return await self._unary("Generate", work, request, context)

    async def Encode(self, request, context):
        async def work(req: pb.EncodeRequest, ticket, method):
            served = self._serving(req.model, req.repository_version)
            served.spec.require_encoder()
            n = requests.image_count(req.images)
            check_count(n, self.max_items)
            key = (served.key, "", ENCODE)
            ticket.reserve(key, n)
            parts = await self._run(served, key, requests.images(served, req.images), None, ticket, method,
                                    lambda rows, _start: np.ascontiguousarray(rows[0], np.float32).tobytes())
            return pb.EncodeResponse(latents=join_tensor(parts, [n, served.latent_dim]), model=served.name,
                                     model_version=served.version,
                                     repository_version=served.repository_version)
        return await self._unary("Encode", work, request, context)

    async def _translate(self, req: pb.TranslateRequest, ticket: Ticket, method: str) -> pb.TranslateResponse:
        """Source latents (encoded on the source's compute thread when images come in) → the alignment, off the
        event loop → on request, images from the target's compute thread."""
        served = self._serving(req.model)
        to = served.spec.check_translation_target(req.to)
        fmt = requests.image_format(req.image_format)
        n = item_count(req, "latents", served.latent_dim)
        check_count(n, self.max_items)
        target = self._serving(to) if req.return_images else None
        if req.WhichOneof("input") == "images":
            served.spec.require_encoder()
            key = (served.key, "", ENCODE)
            ticket.reserve(key, n)
            parts = await self._run(served, key, requests.images(served, req.images), None, ticket, method,
                                    lambda rows, _start: np.ascontiguousarray(rows[0], np.float32))
            z = np.concatenate(parts)
        else:
            z = await latent_array(served, requests.latents(served, req))
        translated = await served.translate(z, to)
        if not np.isfinite(translated).all():
            raise invalid("a translated latent is not finite: the input latents are far outside the source "
                          "model's prior; pass latents of a few units (like N(0, I) samples)")
        response = pb.TranslateResponse(latents=codec.to_tensor(translated), model=served.name,
                                        model_version=served.version, target=to)
        if target is not None:
            key = (target.key, "", GENERATE)
            ticket.reserve(key, n)
            parts = await self._run(target, key, translated, None, ticket, method,
                                    lambda rows, _start: image_payload(rows[0], fmt))
            response.images.CopyFrom(join_images(parts, n, target.spec.image_shape, fmt))
        return response

    async def Translate(self, request, context):
        return await self._unary("Translate", self._translate, request, context)

    async def Traverse(self, request: pb.TraverseRequest, context) -> AsyncIterator[pb.TraverseFrame]:
        async def work(req: pb.TraverseRequest, ticket, method):
            served = self._serving(req.model, req.repository_version)
            editor = requests.editor(served, req.editor)
            k = requests.direction(served, editor, req.direction)
            values = requests.traverse_amounts(req, self.max_items)
            fmt = requests.image_format(req.image_format)
            if item_count(req, "latent", served.latent_dim) != 1:
                raise invalid(f"traverse takes one latent, got shape {list(req.latent.shape)}; pass "
                              f"latent as [1, {served.latent_dim}]")
            key = (served.key, editor, EDIT_IMAGES)
            ticket.reserve(key, req.steps)
            z = await latent_array(served, requests.latents(served, req))
            amounts = np.zeros((req.steps, len(served.direction_index(editor))), np.float32)
            amounts[:, k] = values

            def frames(rows, start: int):  # on the compute thread: one (latent, image) message pair per frame
                requests.check_finite(rows[0], "traversal frame", offset=start)
                return [(codec.to_tensor(rows[0][i : i + 1]), codec.to_images(rows[1][i : i + 1], fmt))
                        for i in range(len(rows[0]))]

            parts = await self._run(served, key, np.repeat(z, req.steps, 0), amounts, ticket, method, frames)
            return served, values, [frame for part in parts for frame in part]

        # Computed as one batch, then streamed, so the frames are consistent and come in order.
        result = await self._unary("Traverse", work, request, context)
        if result is None:  # failed: its status is set
            return
        served, values, frames = result
        for i, (amount, (latent, image)) in enumerate(zip(values, frames, strict=True)):
            yield pb.TraverseFrame(index=i, amount=float(amount), latent=latent, image=image,
                                   model_version=served.version, repository_version=served.repository_version)

    async def EditStream(self, request_iterator, context) -> AsyncIterator[pb.EditStreamResponse]:
        """Messages are handled concurrently (they batch together); each answer carries its request's id."""
        method = "EditStream"
        out: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        deadline = self._deadline(context)

        def failed(req, exc: Exception, start: float) -> None:
            rid = request_id()
            c, message, pushback = to_status(exc, rid)
            self._count_failure(req, exc, c)
            out.put_nowait(pb.EditStreamResponse(id=getattr(req, "id", ""), error=pb.Error(
                code=c.value[0], message=message, retry_pushback_ms=pushback)))
            if self.log_requests:
                log_request(method, rid, _model_name(req), c.name, time.perf_counter() - start)

        async def one(req) -> None:
            start = time.perf_counter()  # the request id is made only for an error or a log line
            try:
                if isinstance(req, Corrupt):
                    raise req.error
                ticket = self.admission.enter(deadline)
            except Exception as exc:
                failed(req, exc, start)
                return
            try:
                out.put_nowait(pb.EditStreamResponse(id=req.id, result=await self._edit(req, ticket, method)))
                if self.log_requests:
                    log_request(method, request_id(), req.model, "OK", time.perf_counter() - start)
            except Exception as exc:
                failed(req, exc, start)
            finally:
                ticket.leave()

        async def read() -> None:
            async for req in request_iterator:
                task = asyncio.create_task(one(req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(set(tasks))
            out.put_nowait(None)

        reader = asyncio.create_task(read())
        self.streams.add(out)
        try:
            if self.draining:
                raise Draining()
            while True:
                response = await out.get()
                if response is None:
                    break
                if response is _CLOSE:
                    raise Draining()
                yield response
            await reader
        except Exception as exc:
            code, message, pushback = to_status(exc, request_id())
            if isinstance(exc, Draining):
                self.metrics.rejected(exc.reason)
            await self._abort(context, code, message, pushback)
        finally:
            self.streams.discard(out)
            reader.cancel()
            for task in list(tasks):
                task.cancel()
