"""Reading request messages: every check of what a client sent happens here, once, at the edge.

Each function raises ``InvalidInput`` (INVALID_ARGUMENT) with a message naming the problem and the fix. Cheap
facts (how many items, which batch key) are read first so that admission control can refuse a request before
anything is decoded or sampled; ``latents`` and ``amounts`` then do the real work.

Documented limits: image formats outside the ``ImageFormat`` enum are refused; each direction may appear once in
``edits``; an edit whose result is not finite (an amount far outside the model's range) is refused with
INVALID_ARGUMENT for that request alone (``check_finite``) rather than answered with NaN.
"""

from __future__ import annotations

import math

import numpy as np

from curvedit.images import decode_image_file
from curvedit.service import codec
from curvedit.service.catalog import ModelEntry
from curvedit.service.errors import InvalidInput, invalid
from curvedit.v1 import latent_edit_pb2 as pb

IMAGE_FORMATS = {pb.IMAGE_FORMAT_UNSPECIFIED: pb.IMAGE_FORMAT_RAW, pb.IMAGE_FORMAT_PNG: pb.IMAGE_FORMAT_PNG,
                 pb.IMAGE_FORMAT_RAW: pb.IMAGE_FORMAT_RAW}
TRAVERSE_RANGE = 1.5  # start = stop = 0 (both unset) means amounts from -1.5 to +1.5, as `curvedit traverse`


class Corrupt:
    """What the server's deserializer returns for bytes that are not a valid message (see ``wire``)."""

    __slots__ = ("error",)

    def __init__(self, message_type: str, size: int, reason: str):
        self.error = InvalidInput(f"the request is not a valid {message_type} ({size} bytes: {reason}); send a "
                                  "serialized curvedit.v1 message (see proto/curvedit/v1/latent_edit.proto)")


def short(text: str, limit: int = 64) -> str:
    """``repr`` of a client-chosen name, cut to ``limit`` characters, for error messages."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def image_format(value: int) -> int:
    """The format to send images in: UNSPECIFIED means RAW in every RPC; unknown values are refused."""
    fmt = IMAGE_FORMATS.get(value)
    if fmt is None:
        raise invalid(f"image_format {value} is not an ImageFormat; use IMAGE_FORMAT_PNG (1) or IMAGE_FORMAT_RAW "
                      "(2), or leave it unset (RAW)")
    return fmt


def editor(served: ModelEntry, name: str) -> str:
    """The editor a request names (empty = the model's default); an unknown one is refused."""
    if name and name not in served.spec.editors:
        raise invalid(f"unknown editor {short(name)}; this model has {served.spec.editors}")
    return served.spec.resolve_editor(name)


def direction(served: ModelEntry, editor: str, name: str) -> int:
    """The column of direction ``name`` in ``editor``'s amounts; an unknown one is refused."""
    index = served.direction_index(editor)
    if name not in index:
        raise invalid(f"unknown direction {short(name)}; known directions: {list(index)}")
    return index[name]


def item_count(request, field: str, latent_dim: int) -> int:
    """How many items the request carries, read without decoding anything; refuses a missing input."""
    which = request.WhichOneof("input")
    if which is None:
        raise invalid(f"no input: set `{field}` (float32 [n, {latent_dim}]) or `seeds`")
    if which == "seeds":
        return len(request.seeds.seeds)
    if which == "seed":
        return 1
    if which == "images":
        return image_count(request.images)
    shape = list(getattr(request, which).shape)
    if len(shape) != 2:
        raise invalid(f"{which} must have 2 dimensions [n, {latent_dim}], got shape {shape}; set Tensor.shape")
    if min(shape) < 0:
        raise invalid(f"{which} shape {shape} has a negative dimension; set Tensor.shape to [n, {latent_dim}]")
    return shape[0]


def image_count(images: pb.Images) -> int:
    """How many images an ``Images`` message carries, read without decoding them."""
    if images.format == pb.IMAGE_FORMAT_PNG:
        return len(images.png)
    if images.format != pb.IMAGE_FORMAT_RAW:
        raise invalid(f"images.format {images.format} is not PNG (1) or RAW (2); set Images.format")
    shape = list(images.shape)
    if len(shape) not in (3, 4) or min(shape) < 0:
        raise invalid(f"raw images must have shape [n, H, W, 3] (or [n, H, W, 1] grayscale), got {shape}")
    return shape[0]


class SeedLatents:
    """Latents to sample from seeds, made on the model's compute thread (lazy: ``len``, slicing, ``array()``).
    The seeds were checked when the request was read."""

    __slots__ = ("sample", "seeds")

    def __init__(self, sample, seeds: list[int]):
        self.sample, self.seeds = sample, seeds  # sample(seeds) → float32 [n, d]: the generator's prior

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: slice) -> SeedLatents:
        return SeedLatents(self.sample, self.seeds[index])

    def array(self) -> np.ndarray:
        return self.sample(self.seeds)


class ImageFiles:
    """Image files to decode and fit to the model, on its compute thread (lazy like ``SeedLatents``). A file
    that is not a readable image fails its own request only, with INVALID_ARGUMENT."""

    __slots__ = ("files", "shape", "start")

    def __init__(self, files: list[bytes], shape: tuple[int, int, int], start: int = 0):
        self.files, self.shape, self.start = files, shape, start

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: slice) -> ImageFiles:
        return ImageFiles(self.files[index], self.shape, self.start + (index.start or 0))

    def array(self) -> np.ndarray:
        return np.stack([decode_image_file(data, self.shape, what=f"images.png[{self.start + i}]")
                         for i, data in enumerate(self.files)])


def images(served: ModelEntry, message: pb.Images) -> np.ndarray | ImageFiles:
    """uint8 ``[n, H, W, 3]`` for the model: raw arrays checked now, PNGs decoded and fitted to its size on the
    compute thread (the rules of ``curvedit.images``); refused for a model that cannot encode."""
    served.spec.require_encoder()
    shape = served.spec.image_shape
    if message.format == pb.IMAGE_FORMAT_PNG:
        return ImageFiles(list(message.png), shape)
    dims = [int(s) for s in message.shape]
    if math.prod(dims) != len(message.data):
        raise invalid(f"raw images have shape {dims} (needs {math.prod(dims)} bytes of uint8) but carry "
                      f"{len(message.data)} bytes; send prod(shape) bytes, row-major")
    return served.spec.check_images(np.frombuffer(message.data, dtype=np.uint8).reshape(dims))


def check_count(n: int, max_items: int) -> None:
    if n <= 0:
        raise invalid("empty batch: pass at least one latent or seed")
    if n > max_items:
        raise invalid(f"too many items: {n} in one request, the limit is {max_items}; split the request "
                      "(or use EditStream), or raise --max-items-per-request on the server")


def latents(served: ModelEntry, request) -> np.ndarray | SeedLatents:
    """The request's latents float32 ``[n, d]``: decoded and checked now, or (seeds) checked now and sampled
    on the compute thread."""
    which = request.WhichOneof("input")
    if which == "seeds" or which == "seed":
        seeds = list(request.seeds.seeds) if which == "seeds" else [request.seed]
        if min(seeds) < 0:
            raise invalid(f"seeds must be >= 0, got {min(seeds)}")
        return SeedLatents(served.sample_latents, seeds)
    z = codec.from_tensor(getattr(request, which), which)
    if z.shape[1] == served.latent_dim and np.isfinite(z).all():
        return z  # the common case, checked cheaply; anything else gets Model's own message below
    return served.spec.check_latents(z)


def amounts(served: ModelEntry, editor: str, request: pb.EditRequest, n: int) -> np.ndarray:
    """float32 ``[n, K]`` amounts from ``edits`` (each direction once) or per-item ``amounts``."""
    if not request.HasField("amounts"):
        index = served.direction_index(editor)
        out = np.zeros((n, len(index)), dtype=np.float32)
        seen = set()
        for e in request.edits:
            k = index.get(e.direction)
            if k is None:
                raise invalid(f"unknown direction {short(e.direction)}; known directions: {list(index)}")
            if not math.isfinite(e.amount):
                raise invalid(f"amount for direction {e.direction!r} is {e.amount}; pass a finite number")
            if k in seen:
                raise invalid(f"direction {e.direction!r} appears twice in `edits`; give each direction once "
                              "(add the amounts yourself if you meant their sum)")
            seen.add(k)
            out[:, k] = e.amount
        return out
    if request.edits:
        raise invalid("set either `edits` (applied to all items) or per-item `amounts`, not both")
    given = codec.from_tensor(request.amounts.amounts, "amounts")
    names = served.spec.directions_of(editor)
    columns = list(request.amounts.directions)
    if not columns:
        return served.spec.amounts(given, n, editor)
    unknown = [c for c in columns if c not in names]
    if unknown or len(set(columns)) != len(columns):
        raise invalid(f"amounts.directions {[short(c) for c in columns[:16]]} must be distinct names among "
                      f"{names}")
    if given.shape != (n, len(columns)):
        raise invalid(f"amounts have shape {list(given.shape)}, expected [{n}, {len(columns)}] "
                      f"(one row per latent, one column per amounts.directions entry)")
    full = np.zeros((n, len(names)), dtype=np.float32)
    full[:, [names.index(c) for c in columns]] = given
    return served.spec.amounts(full, n, editor)


def traverse_amounts(request: pb.TraverseRequest, max_items: int) -> np.ndarray:
    """The frames' amounts float32 ``[steps]``: ``linspace(start, stop, steps)``; both unset = ±1.5."""
    if request.steps < 1:
        raise invalid(f"steps must be >= 1, got {request.steps}")
    check_count(request.steps, max_items)  # before anything of that size is made
    if not (math.isfinite(request.start) and math.isfinite(request.stop)):
        raise invalid(f"start and stop must be finite numbers, got {request.start} and {request.stop}")
    start, stop = request.start, request.stop
    if start == 0 and stop == 0:
        start, stop = -TRAVERSE_RANGE, TRAVERSE_RANGE
    return np.linspace(start, stop, request.steps, dtype=np.float32)


def check_finite(edited: np.ndarray, what: str = "edit", offset: int = 0) -> None:
    """Refuse a result that is not finite: the amounts are far outside what the model's flow can represent.
    ``offset``: the row of ``edited[0]`` within its request (for the message)."""
    finite = np.isfinite(edited).all(axis=1)
    if not finite.all():
        first = offset + int(np.argmin(finite))
        raise invalid(f"the {what} of item {first} is not finite (NaN or Inf): the amounts are far outside this "
                      "model's range; use amounts of a few units (e.g. |t| <= 10)")
