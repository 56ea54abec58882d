"""``inference.GRPCInferenceService`` (the Open Inference Protocol over gRPC) on the native API's port.

Each RPC goes through the native servicer's ``_unary``: the same admission, status codes (one function,
``errors.to_status``), failure counts and drain behaviour; ``ModelInfer`` through the same batcher as ``Edit``.
Tensors come as ``raw_input_contents`` (what clients such as ``tritonclient`` send by default) or as typed
``contents``; results always go back as ``raw_output_contents``.
"""

from __future__ import annotations

from curvedit.inference import grpc_service_pb2 as oip
from curvedit.inference import grpc_service_pb2_grpc as oip_grpc
from curvedit.service.errors import invalid
from curvedit.service.oip import (
    Inference,
    InferTensor,
    model_metadata,
    server_metadata,
    tensor_from_bytes,
    tensor_from_values,
)

_CONTENTS = {"FP32": "fp32_contents", "UINT8": "uint_contents"}


def parameter(value: oip.InferParameter):
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def _inputs(request: oip.ModelInferRequest) -> list[InferTensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per "
                      "input, in the order of `inputs`")
    tensors = []
    for i, t in enumerate(request.inputs):
        if raw:
            tensors.append(tensor_from_bytes(t.name, t.datatype, t.shape, raw[i]))
        else:
            field = _CONTENTS.get(t.datatype, "fp32_contents")
            tensors.append(tensor_from_values(t.name, t.datatype, t.shape, getattr(t.contents, field)))
    return tensors


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, inference: Inference, live=lambda: True):
        self.inference = inference
        self.native = inference.servicer
        self.live = live

    async def _plain(self, method: str, answer, request, context):
        """A metadata or health RPC: no admission ticket needed, but the same error path."""
        async def work(req, _ticket, _method):
            return answer(req)
        return await self.native._unary(method, work, request, context, admit=False)

    async def ServerLive(self, request, context):
        return await self._plain("ServerLive", lambda _: oip.ServerLiveResponse(live=self.live()), request,
                                 context)

    async def ServerReady(self, request, context):
        return await self._plain("ServerReady", lambda _: oip.ServerReadyResponse(ready=self.inference.ready()),
                                 request, context)

    async def ModelReady(self, request, context):
        return await self._plain("ModelReady", lambda r: oip.ModelReadyResponse(
            ready=self.inference.model_ready(r.name, r.version)), request, context)

    async def ServerMetadata(self, request, context):
        return await self._plain("ServerMetadata", lambda _: oip.ServerMetadataResponse(**server_metadata()),
                                 request, context)

    async def ModelMetadata(self, request, context):
        def answer(r):
            meta = model_metadata(self.inference.model(r.name, r.version))
            tensor = oip.ModelMetadataResponse.TensorMetadata
            return oip.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])
        return await self._plain("ModelMetadata", answer, request, context)

    async def RepositoryIndex(self, request, context):
        index = oip.RepositoryIndexResponse.ModelIndex
        return await self._plain("RepositoryIndex", lambda r: oip.RepositoryIndexResponse(
            models=[index(**m) for m in self.inference.index(r.ready)]), request, context)

    async def RepositoryModelLoad(self, request, context):
        async def work(req, _ticket, _method):
            await self.inference.load(req.model_name)
            return oip.RepositoryModelLoadResponse()
        return await self.native._unary("RepositoryModelLoad", work, request, context, admit=False)

    async def RepositoryModelUnload(self, request, context):
        async def work(req, _ticket, _method):
            await self.inference.unload(req.model_name)
            return oip.RepositoryModelUnloadResponse()
        return await self.native._unary("RepositoryModelUnload", work, request, context, admit=False)

    async def ModelInfer(self, request, context):
        async def work(req: oip.ModelInferRequest, ticket, _method):
            served = self.inference.serving(req.model_name, req.model_version)
            editor, seed, translate_to = self.inference.options(
                {k: parameter(v) for k, v in req.parameters.items()})
            outputs = await self.inference.infer(served, _inputs(req), [o.name for o in req.outputs], editor,
                                                 ticket, seed, translate_to)
            response = oip.ModelInferResponse(model_name=served.name, model_version=served.version_label,
                                              id=req.id)
            for out in outputs:
                response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
                response.raw_output_contents.append(out.data)
            return response
        return await self.native._unary("ModelInfer", work, request, context)
