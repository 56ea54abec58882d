"""Python clients for ``curvedit serve``: ``Client`` (blocking) and ``AsyncClient`` (asyncio). NumPy in and out.

    from curvedit.client import Client, Security
    with Client("127.0.0.1:50051") as c:
        z2 = c.edit(seeds=range(4), edits={"scale": 1.0}).latents      # float32 [4, d]
        z3 = c.encode(photos).latents                                     # real images → latents (VAEs)
        edited = c.edit(input_images=photos, edits={"x": 1.0}, images="raw").images   # encode → edit → decode
    with Client("host:50051", security=Security(ca_file="ca.pem", token_file="token")) as c:  # TLS + token
        ...

Real images (``input_images=``) are a uint8 array ``[n, H, W, 3]`` of the model's size (sent raw), or a list of
image files' bytes (sent as PNG entries, fitted to the model's size by the server).

Failures raise ``grpc.RpcError`` with the server's status code and message (the message says the fix).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from curvedit.service import codec
from curvedit.service.channels import MAX_MESSAGE, Security, open_aio_channel, open_channel
from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc


@dataclass
class EditResult:
    """``latents`` float32 ``[n, d]``; ``images`` uint8 ``[n, H, W, 3]`` or None; the model that made them."""

    latents: np.ndarray
    images: np.ndarray | None
    model: str
    model_version: str
    id: str = ""


@dataclass
class StreamError:
    """A failed ``EditStream`` message: grpc status code, message and suggested retry wait."""

    id: str
    code: grpc.StatusCode
    message: str
    retry_pushback_ms: int = 0


def images_message(images) -> pb.Images:
    """Real images for a request: a uint8 array ``[n, H, W, C]`` → RAW; a list of files' bytes → PNG entries."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"input_images must be uint8 0..255, got {images.dtype}")
        return codec.to_images(images, pb.IMAGE_FORMAT_RAW)
    files = list(images)
    if not all(isinstance(f, bytes | bytearray) for f in files):
        raise ValueError("input_images must be a uint8 array [n, H, W, 3] or a list of image files' bytes")
    return pb.Images(format=pb.IMAGE_FORMAT_PNG, png=[bytes(f) for f in files])


def _with_input(request, latents, seeds, input_images):
    """``request`` (an Edit- or TranslateRequest) given exactly one of latents ``[n, d]``, seeds or real images."""
    if sum(x is not None for x in (latents, seeds, input_images)) != 1:
        raise ValueError("pass exactly one of latents= (float32 [n, d]), seeds= or input_images=")
    if latents is not None:
        request.latents.CopyFrom(codec.to_tensor(np.asarray(latents, dtype=np.float32)))
    elif seeds is not None:
        request.seeds.seeds.extend(int(s) for s in seeds)
    else:
        request.images.CopyFrom(images_message(input_images))
    return request


def edit_request(latents=None, seeds: Iterable[int] | None = None, edits: Mapping[str, float] | None = None,
                 amounts: np.ndarray | None = None, directions: Sequence[str] = (), model: str = "",
                 editor: str = "", images: str = "none", id: str = "", input_images=None) -> pb.EditRequest:
    """Build an ``EditRequest``: ``latents [n, d]``, ``seeds`` or real ``input_images``; ``edits`` for all or
    ``amounts [n, K]``; ``images`` is the format the edited images come back in ("none", "raw", "png")."""
    request = _with_input(pb.EditRequest(model=model, editor=editor, id=id,
                                         edits=[pb.DirectionAmount(direction=k, amount=float(v)) for k, v in
                                                (edits or {}).items()]), latents, seeds, input_images)
    if amounts is not None:
        request.amounts.CopyFrom(pb.Amounts(directions=list(directions), amounts=codec.to_tensor(amounts)))
    if images != "none":
        request.return_images, request.image_format = True, codec.image_format(images)
    return request


def _result(response: pb.EditResponse) -> EditResult:
    images = codec.from_images(response.images) if response.HasField("images") else None
    return EditResult(codec.from_tensor(response.latents).copy(), images, response.model, response.model_version,
                      response.id)


def _stream_item(response: pb.EditStreamResponse) -> EditResult | StreamError:
    if response.HasField("error"):
        e = response.error
        return StreamError(response.id, grpc.StatusCode(_CODES[e.code]), e.message, e.retry_pushback_ms)
    return _result(response.result)


_CODES = {code.value[0]: code.value for code in grpc.StatusCode}


def _generate_request(latents, seeds, model: str, images: str, sampling_seed: int | None = None
                      ) -> pb.GenerateRequest:
    if (latents is None) == (seeds is None):
        raise ValueError("pass exactly one of latents= (float32 [n, d]) or seeds=")
    request = pb.GenerateRequest(model=model, image_format=codec.image_format(images))
    if sampling_seed is not None:
        request.sampling_seed = int(sampling_seed)
    if latents is not None:
        request.latents.CopyFrom(codec.to_tensor(np.asarray(latents, dtype=np.float32)))
    else:
        request.seeds.seeds.extend(int(s) for s in seeds)
    return request


def _traverse_request(direction, latent, seed, start, stop, steps, model, editor, images) -> pb.TraverseRequest:
    request = pb.TraverseRequest(model=model, editor=editor, direction=direction, start=start, stop=stop,
                                 steps=steps, image_format=codec.image_format(images))
    if latent is not None:
        request.latent.CopyFrom(codec.to_tensor(np.asarray(latent, dtype=np.float32).reshape(1, -1)))
    else:
        request.seed = int(seed)
    return request


def translate_request(to: str, latents=None, seeds=None, input_images=None, model: str = "",
                      images: str = "none") -> pb.TranslateRequest:
    """A ``TranslateRequest`` from exactly one of latents ``[n, d]``, seeds or real images; ``images``: ``"none"``,
    ``"raw"`` or ``"png"`` (render with the target)."""
    request = _with_input(pb.TranslateRequest(model=model, to=to, return_images=images != "none"), latents,
                          seeds, input_images)
    if images != "none":
        request.image_format = codec.image_format(images)
    return request


class Client:
    """Blocking client. ``target`` is ``host:port``, or several servers (a list of ``host:port``, commas in one
    string, or ``dns:///name:port`` of several addresses): each call then goes to the next server and a call
    refused UNAVAILABLE or RESOURCE_EXHAUSTED is retried elsewhere, after the server's pushback
    (``curvedit.service.channels``). ``timeout`` (s) is the default per-call deadline; ``security`` says how to
    reach a server with TLS and/or tokens (default: plaintext, no token)."""

    def __init__(self, target: str | Sequence[str], timeout: float | None = 60.0,
                 security: Security | None = None):
        self.target = target
        self.channel = open_channel(target, security)
        self.stub = pb_grpc.LatentEditServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models)

    def get_model(self, name: str = "") -> pb.ModelInfo:
        return self.stub.GetModel(pb.GetModelRequest(name=name), timeout=self.timeout)

    def health(self, service: str = "") -> str:
        """``"SERVING"``, ``"NOT_SERVING"``, ...; raises ``grpc.RpcError`` if the server cannot be reached."""
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def edit(self, latents=None, seeds=None, edits=None, amounts=None, directions=(), model="", editor="",
             images="none", timeout: float | None = None, input_images=None) -> EditResult:
        """Edited latents ``[n, d]`` (and images if ``images`` is ``"raw"`` or ``"png"``) of ``latents``,
        ``seeds`` or real ``input_images``."""
        request = edit_request(latents, seeds, edits, amounts, directions, model, editor, images,
                               input_images=input_images)
        return _result(self.stub.Edit(request, timeout=timeout or self.timeout))

    def encode(self, input_images, model: str = "") -> np.ndarray:
        """Latents float32 ``[n, d]`` of real images (models that can encode)."""
        request = pb.EncodeRequest(model=model, images=images_message(input_images))
        return codec.from_tensor(self.stub.Encode(request, timeout=self.timeout).latents).copy()

    def translate(self, to: str, latents=None, seeds=None, input_images=None, model: str = "",
                  images: str = "none") -> tuple[np.ndarray, np.ndarray | None]:
        """``(target latents float32 [n, d_t], target images uint8 [n, H, W, 3] or None)``."""
        request = translate_request(to, latents, seeds, input_images, model, images)
        response = self.stub.Translate(request, timeout=self.timeout)
        pictures = codec.from_images(response.images) if images != "none" else None
        return codec.from_tensor(response.latents).copy(), pictures

    def edit_stream(self, requests: Iterable[pb.EditRequest], timeout: float | None = None
                    ) -> Iterator[EditResult | StreamError]:
        """Send ``EditRequest``s (see ``edit_request``) on one stream; yields results/errors as they come."""
        for response in self.stub.EditStream(iter(requests), timeout=timeout):
            yield _stream_item(response)

    def traverse(self, direction: str, latent=None, seed: int = 0, start: float = -1.5, stop: float = 1.5,
                 steps: int = 7, model: str = "", editor: str = "", images: str = "raw"
                 ) -> Iterator[pb.TraverseFrame]:
        """Frames at ``linspace(start, stop, steps)`` along ``direction``; each carries its image (raw or png)."""
        request = _traverse_request(direction, latent, seed, start, stop, steps, model, editor, images)
        yield from self.stub.Traverse(request, timeout=self.timeout)

    def generate(self, latents=None, seeds=None, model: str = "", images: str = "raw",
                 sampling_seed: int | None = None) -> np.ndarray:
        """uint8 images ``[n, H, W, 3]``; ``sampling_seed``: the draw of a generator that samples (PixelCNN)."""
        request = _generate_request(latents, seeds, model, images, sampling_seed)
        response = self.stub.Generate(request, timeout=self.timeout)
        return codec.from_images(response.images)


class AsyncClient:
    """asyncio client with the same methods as ``Client`` (coroutines / async iterators)."""

    def __init__(self, target: str | Sequence[str], timeout: float | None = 60.0,
                 security: Security | None = None):
        self.target = target
        self.channel = open_aio_channel(target, security)
        self.stub = pb_grpc.LatentEditServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def list_models(self) -> list[pb.ModelInfo]:
        return list((await self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)).models)

    async def get_model(self, name: str = "") -> pb.ModelInfo:
        return await self.stub.GetModel(pb.GetModelRequest(name=name), timeout=self.timeout)

    async def health(self, service: str = "") -> str:
        response = await self.health_stub.Check(health_pb2.HealthCheckRequest(service=service),
                                                timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def edit(self, latents=None, seeds=None, edits=None, amounts=None, directions=(), model="", editor="",
                   images="none", timeout: float | None = None, input_images=None) -> EditResult:
        request = edit_request(latents, seeds, edits, amounts, directions, model, editor, images,
                               input_images=input_images)
        return _result(await self.stub.Edit(request, timeout=timeout or self.timeout))

    async def encode(self, input_images, model: str = "") -> np.ndarray:
        request = pb.EncodeRequest(model=model, images=images_message(input_images))
        return codec.from_tensor((await self.stub.Encode(request, timeout=self.timeout)).latents).copy()

    async def edit_stream(self, requests, timeout: float | None = None) -> AsyncIterator[EditResult | StreamError]:
        """``requests``: an iterable or async iterable of ``EditRequest``."""
        async for response in self.stub.EditStream(requests, timeout=timeout):
            yield _stream_item(response)

    async def traverse(self, direction: str, latent=None, seed: int = 0, start: float = -1.5, stop: float = 1.5,
                       steps: int = 7, model: str = "", editor: str = "", images: str = "raw"
                       ) -> AsyncIterator[pb.TraverseFrame]:
        request = _traverse_request(direction, latent, seed, start, stop, steps, model, editor, images)
        async for frame in self.stub.Traverse(request, timeout=self.timeout):
            yield frame

    async def generate(self, latents=None, seeds=None, model: str = "", images: str = "raw",
                       sampling_seed: int | None = None) -> np.ndarray:
        request = _generate_request(latents, seeds, model, images, sampling_seed)
        response = await self.stub.Generate(request, timeout=self.timeout)
        return codec.from_images(response.images)


__all__ = ["MAX_MESSAGE", "AsyncClient", "Client", "EditResult", "Security", "StreamError", "edit_request",
           "open_aio_channel", "open_channel"]
