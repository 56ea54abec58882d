"""``LatentEditService``: turns messages into batcher work and results back into messages.

Each handler is admitted first (``admission``: draining, concurrency, queue space, deadline — all before any
decoding or sampling), then reads its request (``requests``: every input check, once), queues its items in the
``BatchRunner``, awaits them and answers. Every outcome, success or any exception, goes through ``_unary`` /
``_abort``: one place for status codes (``errors.to_status``), the pushback trailer and metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from curvedit.service import codec, requests
from curvedit.service.admission import Admission, Ticket
from curvedit.service.batcher import BatchRunner
from curvedit.service.errors import (
    PUSHBACK_KEY,
    Draining,
    failure_reason,
    invalid,
    not_found,
    reject_reason,
    to_status,
)
from curvedit.service.metrics import ServerMetrics
from curvedit.service.models import EDIT, EDIT_IMAGES, ENCODE, GENERATE, ServedModel, from_images
from curvedit.service.requests import Corrupt, check_count, item_count
from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

_CLOSE = object()  # put into an open EditStream's answer queue at the end of a drain: end it with UNAVAILABLE
HEAVY_ITEMS = 32  # above this many seeds to sample or PNGs to encode, the work leaves the event loop


class LatentEditServicer(pb_grpc.LatentEditServiceServicer):
    def __init__(self, models: dict[str, ServedModel], runner: BatchRunner, admission: Admission,
                 metrics: ServerMetrics, max_items: int):
        self.models = models
        self.default = next(iter(models))
        self.runner = runner
        self.admission = admission
        self.metrics = metrics
        self.max_items = max_items
        self.streams: set[asyncio.Queue] = set()  # answer queues of the open EditStreams
        self.hold: asyncio.Future | None = None  # at the end of a drain: refusals wait for it (see server.drain)
        # Sampling many seeds or encoding many PNGs takes milliseconds; on a thread of its own the event loop
        # keeps answering (and refusing) other calls meanwhile.
        self.helper = ThreadPoolExecutor(1, "curvedit-prepare")

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

    # -- plumbing -------------------------------------------------------------------------------------------
    def _model(self, name: str) -> ServedModel:
        served = self.models.get(name or self.default)
        if served is None:
            raise not_found(f"no model named {requests.short(name)}; this server has {list(self.models)} "
                            "(see ListModels)")
        return served

    def _count_failure(self, request, exc: BaseException, code: grpc.StatusCode) -> None:
        if not isinstance(request, Corrupt) and code != grpc.StatusCode.NOT_FOUND:
            served = self.models.get(getattr(request, "model", "") or self.default)
            if served is not None:
                self.metrics.request_failed(served.name, served.version, failure_reason(code))
        reason = reject_reason(exc, code)
        if reason is not None:
            self.metrics.rejected(reason)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self.runner.clock() + remaining

    async def _unary(self, method: str, work, request, context: grpc.aio.ServicerContext, kind: str = "unary"):
        self.metrics.rpc_started(kind, method)
        start, code, recorded, ticket = time.perf_counter(), grpc.StatusCode.OK, False, None
        try:
            if isinstance(request, Corrupt):
                raise request.error
            ticket = self.admission.enter(self._deadline(context))
            return await work(request, ticket, method)
        except BaseException as exc:
            code, message, pushback = to_status(exc)
            if isinstance(exc, asyncio.CancelledError):
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0.02:
                    # gRPC cancels the handler when the deadline passes (its timer may fire a few ms early).
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                self._count_failure(request, exc, code)
                raise
            self._count_failure(request, exc, code)
            recorded = True
            await self._abort(context, code, message, pushback, kind, method, start)
        finally:
            if ticket is not None:
                ticket.leave()
            if not recorded:
                self.metrics.rpc_handled(kind, method, code.name, time.perf_counter() - start)

    async def _abort(self, context, code, message: str, pushback: int, kind: str, method: str, start: float):
        """Count the RPC as handled, then end it: the count must be visible once the client sees the status."""
        if code == grpc.StatusCode.UNAVAILABLE and self.hold is not None and not self.hold.done():
            await asyncio.shield(self.hold)
        if pushback:
            context.set_trailing_metadata(((PUSHBACK_KEY, str(pushback)),))
        self.metrics.rpc_handled(kind, method, code.name, time.perf_counter() - start)
        await context.abort(code, message)

    async def _run(self, served: ServedModel, key, z: np.ndarray, amounts, ticket: Ticket, method: str):
        """Queue ``z [n, d]`` under ``key``, await every chunk; returns the outputs concatenated over chunks."""
        start = self.runner.clock()
        entries = self.runner.submit(key, z, amounts, ticket.deadline)
        ticket.queued()
        if len(entries) == 1:
            outputs = await entries[0].future
        else:
            try:
                results = await asyncio.gather(*(e.future for e in entries))
            except BaseException:
                for e in entries:  # the request has failed: its other chunks are dropped before compute
                    e.future.cancel()
                raise
            outputs = tuple(np.concatenate(parts) for parts in zip(*results, strict=True))
        end = self.runner.clock()
        queue_s = max(e.started - e.arrival for e in entries)
        self.metrics.request_done(served.name, served.version, method, end - start, queue_s)
        return outputs

    async def _latents(self, served: ServedModel, request, n: int) -> np.ndarray:
        if n > HEAVY_ITEMS and request.WhichOneof("input") == "seeds":
            return await asyncio.get_running_loop().run_in_executor(self.helper, requests.latents, served, request)
        return requests.latents(served, request)

    async def _real_images(self, served: ServedModel, message: pb.Images, n: int) -> np.ndarray:
        """A request's real images as uint8 ``[n, H, W, 3]`` (PNG decoding leaves the loop when there is much)."""
        if n > HEAVY_ITEMS // 8 and message.format == pb.IMAGE_FORMAT_PNG:
            return await asyncio.get_running_loop().run_in_executor(self.helper, requests.images, served, message)
        return requests.images(served, message)

    async def _images(self, images: np.ndarray, fmt: int) -> pb.Images:
        if fmt == pb.IMAGE_FORMAT_PNG and len(images) > HEAVY_ITEMS:
            return await asyncio.get_running_loop().run_in_executor(self.helper, codec.to_images, images, fmt)
        return codec.to_images(images, fmt)

    # -- the RPCs -------------------------------------------------------------------------------------------
    async def ListModels(self, request, context):
        async def work(_request, _ticket, _method):
            return pb.ListModelsResponse(models=[m.info(self.max_items) for m in self.models.values()])
        return await self._unary("ListModels", work, request, context)

    async def GetModel(self, request, context):
        async def work(req, _ticket, _method):
            return self._model(req.name).info(self.max_items)
        return await self._unary("GetModel", work, request, context)

    async def _edit(self, request: pb.EditRequest, ticket: Ticket, method: str) -> pb.EditResponse:
        served = self._model(request.model)
        editor = requests.editor(served, request.editor)
        fmt = requests.image_format(request.image_format)
        n = item_count(request, "latents", served.latent_dim)
        check_count(n, self.max_items)
        kind = EDIT_IMAGES if request.return_images else EDIT
        real = request.WhichOneof("input") == "images"
        if real:
            served.model.require_encoder()
            kind = from_images(kind)
        key = (served.name, editor, kind)
        ticket.reserve(key, n)
        amounts = requests.amounts(served, editor, request, n)
        if real:
            x = await self._real_images(served, request.images, n)
        else:
            x = await self._latents(served, request, n)
        outputs = await self._run(served, key, x, amounts, ticket, method)
        requests.check_finite(outputs[0])
        response = pb.EditResponse(latents=codec.to_tensor(outputs[0]), model=served.name,
                                   model_version=served.version, id=request.id)
        if request.return_images:
            response.images.CopyFrom(await self._images(outputs[1], fmt))
        return response

    async def Edit(self, request, context):
        return await self._unary("Edit", self._edit, request, context)

    async def Generate(self, request, context):
        async def work(req: pb.GenerateRequest, ticket, method):
            served = self._model(req.model)
            fmt = requests.image_format(req.image_format)
            n = item_count(req, "latents", served.latent_dim)
            check_count(n, self.max_items)
            key = (served.name, "", GENERATE)
            ticket.reserve(key, n)
            z = await self._latents(served, req, n)
            (images,) = await self._run(served, key, z, None, ticket, method)
            return pb.GenerateResponse(images=await self._images(images, fmt), model=served.name,
                                       model_version=served.version)
        return await self._unary("Generate", work, request, context)

    async def Encode(self, request, context):
        async def work(req: pb.EncodeRequest, ticket, method):
            served = self._model(req.model)
            served.model.require_encoder()
            n = requests.image_count(req.images)
            check_count(n, self.max_items)
            key = (served.name, "", ENCODE)
            ticket.reserve(key, n)
            (z,) = await self._run(served, key, await self._real_images(served, req.images, n), None, ticket,
                                   method)
            return pb.EncodeResponse(latents=codec.to_tensor(z), model=served.name, model_version=served.version)
        return await self._unary("Encode", work, request, context)

    async def Traverse(self, request: pb.TraverseRequest, context) -> AsyncIterator[pb.TraverseFrame]:
        async def work(req: pb.TraverseRequest, ticket, method):
            served = self._model(req.model)
            editor = requests.editor(served, req.editor)
            k = requests.direction(served, editor, req.direction)
            values = requests.traverse_amounts(req, self.max_items)
            fmt = requests.image_format(req.image_format)
            if item_count(req, "latent", served.latent_dim) != 1:
                raise invalid(f"traverse takes one latent, got shape {list(req.latent.shape)}; pass "
                                       f"latent as [1, {served.latent_dim}]")
            key = (served.name, editor, EDIT_IMAGES)
            ticket.reserve(key, req.steps)
            z = requests.latents(served, req)
            amounts = np.zeros((req.steps, len(served.direction_index(editor))), np.float32)
            amounts[:, k] = values
            outputs = await self._run(served, key, np.repeat(z, req.steps, 0), amounts, ticket, method)
            requests.check_finite(outputs[0], "traversal frame")
            return served, values, outputs, fmt

        # Computed as one batch, then streamed, so the frames are consistent and come in order.
        served, values, outputs, fmt = await self._unary("Traverse", work, request, context, "server_stream")
        for i, amount in enumerate(values):
            frame = pb.TraverseFrame(index=i, amount=float(amount), latent=codec.to_tensor(outputs[0][i : i + 1]),
                                     model_version=served.version)
            frame.image.CopyFrom(codec.to_images(outputs[1][i : i + 1], fmt))
            self.metrics.message("server_stream", "Traverse", sent=1)
            yield frame

    async def EditStream(self, request_iterator, context) -> AsyncIterator[pb.EditStreamResponse]:
        """Messages are handled concurrently (they batch together); each answer carries its request's id."""
        method, kind = "EditStream", "bidi_stream"
        self.metrics.rpc_started(kind, method)
        start, code, recorded = time.perf_counter(), grpc.StatusCode.OK, False
        out: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        deadline = self._deadline(context)

        def failed(req, exc: Exception) -> None:
            c, message, pushback = to_status(exc)
            self._count_failure(req, exc, c)
            out.put_nowait(pb.EditStreamResponse(id=getattr(req, "id", ""), error=pb.Error(
                code=c.value[0], message=message, retry_pushback_ms=pushback)))

        async def one(req) -> None:
            try:
                if isinstance(req, Corrupt):
                    raise req.error
                ticket = self.admission.enter(deadline)
            except Exception as exc:
                failed(req, exc)
                return
            try:
                out.put_nowait(pb.EditStreamResponse(id=req.id, result=await self._edit(req, ticket, method)))
            except Exception as exc:
                failed(req, exc)
            finally:
                ticket.leave()

        async def read() -> None:
            async for req in request_iterator:
                self.metrics.message(kind, method, received=1)
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
                self.metrics.message(kind, method, sent=1)
                yield response
            await reader
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message, pushback = to_status(exc)
            if isinstance(exc, Draining):
                self.metrics.rejected(exc.reason)
            recorded = True
            await self._abort(context, code, message, pushback, kind, method, start)
        finally:
            self.streams.discard(out)
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            if not recorded:
                self.metrics.rpc_handled(kind, method, code.name, time.perf_counter() - start)
