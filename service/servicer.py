"""``LatentEditService``: turns messages into batcher work and results back into messages.

Each handler checks its input (via ``curvedit.api.Model``, whose ``ValueError`` messages name the fix),
queues items in the ``BatchRunner``, awaits them and answers. Every outcome, success or any exception, goes
through ``_finish``: one place for status codes (``errors.to_status``), the pushback trailer and metrics.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from curvedit.service import codec
from curvedit.service.batcher import BatchRunner
from curvedit.service.errors import PUSHBACK_KEY, Draining, failure_reason, invalid, not_found, to_status
from curvedit.service.metrics import ServerMetrics
from curvedit.service.models import EDIT, EDIT_IMAGES, GENERATE, ServedModel
from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

_REJECT_REASON = {grpc.StatusCode.RESOURCE_EXHAUSTED: "queue_full", grpc.StatusCode.UNAVAILABLE: "draining",
                  grpc.StatusCode.INVALID_ARGUMENT: "invalid", grpc.StatusCode.NOT_FOUND: "not_found",
                  grpc.StatusCode.DEADLINE_EXCEEDED: "deadline", grpc.StatusCode.CANCELLED: "cancelled"}


class LatentEditServicer(pb_grpc.LatentEditServiceServicer):
    def __init__(self, models: dict[str, ServedModel], runner: BatchRunner, metrics: ServerMetrics,
                 max_items: int):
        self.models = models
        self.default = next(iter(models))
        self.runner = runner
        self.metrics = metrics
        self.max_items = max_items
        self.draining = False
        self.inflight = 0  # accepted requests (stream messages) not yet answered

    # -- plumbing -------------------------------------------------------------------------------------------
    def _model(self, name: str) -> ServedModel:
        served = self.models.get(name or self.default)
        if served is None:
            raise not_found(f"no model named {name!r}; this server has {list(self.models)} (see ListModels)")
        return served

    def _accept(self) -> None:
        if self.draining:
            raise Draining()
        self.inflight += 1

    def _count_failure(self, request, code: grpc.StatusCode) -> None:
        served = self.models.get(getattr(request, "model", "") or self.default)
        if served is not None and code != grpc.StatusCode.NOT_FOUND:
            self.metrics.request_failed(served.name, served.version, failure_reason(code))
        if code in _REJECT_REASON and code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            self.metrics.rejected(_REJECT_REASON[code])

    async def _unary(self, method: str, work, request, context: grpc.aio.ServicerContext, kind: str = "unary"):
        self.metrics.rpc_started(kind, method)
        start, code, recorded = time.perf_counter(), grpc.StatusCode.OK, False
        try:
            self._accept()
            try:
                return await work(request, self._deadline(context), method)
            finally:
                self.inflight -= 1
        except BaseException as exc:
            code, message, pushback = to_status(exc)
            remaining = context.time_remaining()
            if isinstance(exc, asyncio.CancelledError) and remaining is not None and remaining <= 0.02:
                # gRPC cancels the handler when the deadline passes (its timer may fire a few ms early).
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            self._count_failure(request, code)
            if isinstance(exc, asyncio.CancelledError):
                raise
            recorded = True
            await self._abort(context, code, message, pushback, kind, method, start)
        finally:
            if not recorded:
                self.metrics.rpc_handled(kind, method, code.name, time.perf_counter() - start)

    async def _abort(self, context, code, message: str, pushback: int, kind: str, method: str, start: float):
        """Count the RPC as handled, then end it: the count must be visible once the client sees the status."""
        if pushback:
            context.set_trailing_metadata(((PUSHBACK_KEY, str(pushback)),))
        self.metrics.rpc_handled(kind, method, code.name, time.perf_counter() - start)
        await context.abort(code, message)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self.runner.clock() + remaining

    async def _run(self, served: ServedModel, key, z: np.ndarray, amounts, deadline, method: str):
        """Queue ``z [n, d]`` under ``key``, await every chunk; returns the outputs concatenated over chunks."""
        start = self.runner.clock()
        entries = self.runner.submit(key, z, amounts, deadline)
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

    def _latents(self, served: ServedModel, request, field: str = "latents") -> np.ndarray:
        which = request.WhichOneof("input")
        if which is None:
            raise invalid(f"no input: set `{field}` (float32 [n, {served.latent_dim}]) or `seeds`")
        if which == "seeds" or which == "seed":
            seeds = list(request.seeds.seeds) if which == "seeds" else [request.seed]
            self._check_count(len(seeds))
            return served.model.sample_seeds(seeds)
        z = codec.from_tensor(getattr(request, which), which)
        self._check_count(z.shape[0])
        if z.shape[1] == served.latent_dim and np.isfinite(z).all():
            return z  # the common case, checked cheaply; anything else gets Model's own message below
        return served.model.check_latents(z)

    def _check_count(self, n: int) -> None:
        if n == 0:
            raise invalid("empty batch: pass at least one latent or seed")
        if n > self.max_items:
            raise invalid(f"too many items: {n} in one request, the limit is {self.max_items}; split the request "
                          "(or use EditStream), or raise --max-items-per-request on the server")

    def _amounts(self, served: ServedModel, editor: str, request: pb.EditRequest, n: int) -> np.ndarray:
        if not request.HasField("amounts"):
            index = served.direction_index(editor)
            out = np.zeros((n, len(index)), dtype=np.float32)
            for e in request.edits:
                k = index.get(e.direction)
                if k is None or not math.isfinite(e.amount):  # Model.amounts raises the explanatory error
                    return served.model.amounts({e.direction: e.amount for e in request.edits}, n, editor)
                out[:, k] = e.amount
            return out
        if request.edits:
            raise invalid("set either `edits` (applied to all items) or per-item `amounts`, not both")
        given = codec.from_tensor(request.amounts.amounts, "amounts")
        names = served.model.directions_of(editor)
        columns = list(request.amounts.directions)
        if not columns:
            return served.model.amounts(given, n, editor)
        unknown = [c for c in columns if c not in names]
        if unknown or len(set(columns)) != len(columns):
            raise invalid(f"amounts.directions {columns} must be distinct names among {names}")
        if given.ndim != 2 or given.shape != (n, len(columns)):
            raise invalid(f"amounts have shape {list(given.shape)}, expected [{n}, {len(columns)}] "
                          f"(one row per latent, one column per amounts.directions entry)")
        full = np.zeros((n, len(names)), dtype=np.float32)
        full[:, [names.index(c) for c in columns]] = given
        return served.model.amounts(full, n, editor)

    # -- the RPCs -------------------------------------------------------------------------------------------
    async def ListModels(self, request, context):
        async def work(_request, _deadline, _method):
            return pb.ListModelsResponse(models=[m.info(self.max_items) for m in self.models.values()])
        return await self._unary("ListModels", work, request, context)

    async def GetModel(self, request, context):
        async def work(req, _deadline, _method):
            return self._model(req.name).info(self.max_items)
        return await self._unary("GetModel", work, request, context)

    async def _edit(self, request: pb.EditRequest, deadline, method: str) -> pb.EditResponse:
        served = self._model(request.model)
        editor = served.model.resolve_editor(request.editor)
        z = self._latents(served, request)
        amounts = self._amounts(served, editor, request, z.shape[0])
        key = (served.name, editor, EDIT_IMAGES if request.return_images else EDIT)
        outputs = await self._run(served, key, z, amounts, deadline, method)
        response = pb.EditResponse(latents=codec.to_tensor(outputs[0]), model=served.name,
                                   model_version=served.version, id=request.id)
        if request.return_images:
            response.images.CopyFrom(codec.to_images(outputs[1], request.image_format))
        return response

    async def Edit(self, request, context):
        return await self._unary("Edit", self._edit, request, context)

    async def Generate(self, request, context):
        async def work(req: pb.GenerateRequest, deadline, method):
            served = self._model(req.model)
            z = self._latents(served, req)
            (images,) = await self._run(served, (served.name, "", GENERATE), z, None, deadline, method)
            return pb.GenerateResponse(images=codec.to_images(images, req.image_format), model=served.name,
                                       model_version=served.version)
        return await self._unary("Generate", work, request, context)

    async def Traverse(self, request: pb.TraverseRequest, context) -> AsyncIterator[pb.TraverseFrame]:
        async def work(req: pb.TraverseRequest, deadline, method):
            served = self._model(req.model)
            editor = served.model.resolve_editor(req.editor)
            if req.steps < 1:
                raise invalid(f"steps must be >= 1, got {req.steps}")
            if not (math.isfinite(req.start) and math.isfinite(req.stop)):
                raise invalid(f"start and stop must be finite numbers, got {req.start} and {req.stop}")
            self._check_count(req.steps)
            z = self._latents(served, req, "latent")
            if z.shape[0] != 1:
                raise invalid(f"traverse takes one latent, got {z.shape[0]}; pass latent as [1, d]")
            amounts = served.model.amounts({req.direction: 1.0}, req.steps, editor)
            values = np.linspace(req.start, req.stop, req.steps, dtype=np.float32)
            images = req.image_format != pb.IMAGE_FORMAT_UNSPECIFIED
            outputs = await self._run(served, (served.name, editor, EDIT_IMAGES if images else EDIT),
                                      np.repeat(z, req.steps, 0), amounts * values[:, None], deadline, method)
            return served, values, outputs

        # Computed as one batch, then streamed, so the frames are consistent and come in order.
        served, values, outputs = await self._unary("Traverse", work, request, context, "server_stream")
        for i, amount in enumerate(values):
            frame = pb.TraverseFrame(index=i, amount=float(amount), latent=codec.to_tensor(outputs[0][i : i + 1]),
                                     model_version=served.version)
            if len(outputs) > 1:
                frame.image.CopyFrom(codec.to_images(outputs[1][i : i + 1], request.image_format))
            self.metrics.message("server_stream", "Traverse", sent=1)
            yield frame

    async def EditStream(self, request_iterator, context) -> AsyncIterator[pb.EditStreamResponse]:
        """Messages are handled concurrently (they batch together); each answer carries its request's id."""
        method, kind = "EditStream", "bidi_stream"
        self.metrics.rpc_started(kind, method)
        start, code, recorded = time.perf_counter(), grpc.StatusCode.OK, False
        out: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def one(req: pb.EditRequest) -> None:
            try:
                self._accept()
            except Exception as exc:
                c, message, pushback = to_status(exc)
                self._count_failure(req, c)
                out.put_nowait(pb.EditStreamResponse(id=req.id, error=pb.Error(code=c.value[0], message=message,
                                                                                retry_pushback_ms=pushback)))
                return
            try:
                result = await self._edit(req, self._deadline(context), method)
                out.put_nowait(pb.EditStreamResponse(id=req.id, result=result))
            except Exception as exc:
                c, message, pushback = to_status(exc)
                self._count_failure(req, c)
                out.put_nowait(pb.EditStreamResponse(id=req.id, error=pb.Error(code=c.value[0], message=message,
                                                                                retry_pushback_ms=pushback)))
            finally:
                self.inflight -= 1

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
        try:
            if self.draining:
                raise Draining()
            while True:
                response = await out.get()
                if response is None:
                    break
                self.metrics.message(kind, method, sent=1)
                yield response
            await reader
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message, pushback = to_status(exc)
            recorded = True
            await self._abort(context, code, message, pushback, kind, method, start)
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            if not recorded:
                self.metrics.rpc_handled(kind, method, code.name, time.perf_counter() - start)
