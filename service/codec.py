"""NumPy ↔ protobuf: ``Tensor`` (float32 LE row-major) and ``Images`` (PNG or raw uint8 [n, H, W, 3]).

Decoding checks the shape against the byte length and raises ``curvedit.InputError`` naming both, so a bad message
becomes INVALID_ARGUMENT (see ``errors.to_status``).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from curvedit.errors import InputError
from curvedit.v1 import latent_edit_pb2 as pb

_F32 = np.dtype("<f4")
MAX_DIM = 2**31 - 1  # no dimension of a request's tensor can be larger (numpy could not even hold it)


def to_tensor(array: np.ndarray) -> pb.Tensor:
    """float32 array of any shape → ``Tensor``."""
    array = np.ascontiguousarray(array, dtype=_F32)
    return pb.Tensor(shape=list(array.shape), data=array.tobytes())


def from_tensor(tensor: pb.Tensor, what: str = "tensor", ndim: int | None = 2) -> np.ndarray:
    """``Tensor`` → float32 array (a read-only view of the message bytes)."""
    shape = list(tensor.shape)
    if ndim is not None and len(shape) != ndim:
        raise InputError(f"{what} must have {ndim} dimensions, got shape {shape}; set Tensor.shape")
    if min(shape, default=0) < 0:
        raise InputError(f"{what} shape {shape} has a negative dimension")
    if max(shape, default=0) > MAX_DIM:
        raise InputError(f"{what} shape {shape} has a dimension above {MAX_DIM}; no tensor this server accepts is "
                         "that large — set Tensor.shape to the array's real shape")
    expected = math.prod(shape) * 4
    if len(tensor.data) != expected:
        raise InputError(f"{what} has shape {shape} (needs {expected} bytes of float32) but carries "
                         f"{len(tensor.data)} bytes; send prod(shape)*4 little-endian float32 bytes")
    return np.frombuffer(tensor.data, dtype=_F32).reshape(shape)


def to_images(images: np.ndarray, fmt: int) -> pb.Images:
    """uint8 ``[n, H, W, 3]`` → ``Images`` in format ``fmt`` (UNSPECIFIED means RAW)."""
    if fmt == pb.IMAGE_FORMAT_PNG:
        pngs = []
        for image in images:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        return pb.Images(format=pb.IMAGE_FORMAT_PNG, png=pngs)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    return pb.Images(format=pb.IMAGE_FORMAT_RAW, shape=list(images.shape), data=images.tobytes())


def from_images(images: pb.Images) -> np.ndarray:
    """``Images`` → uint8 ``[n, H, W, 3]`` (PNGs decoded)."""
    if images.format == pb.IMAGE_FORMAT_PNG:
        if not images.png:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images.png])
    shape = [int(s) for s in images.shape]
    return np.frombuffer(images.data, dtype=np.uint8).reshape(shape)


def image_format(name: str) -> int:
    """``"png"`` / ``"raw"`` / ``"none"`` → the ``ImageFormat`` enum value."""
    formats = {"png": pb.IMAGE_FORMAT_PNG, "raw": pb.IMAGE_FORMAT_RAW, "none": pb.IMAGE_FORMAT_UNSPECIFIED}
    if name not in formats:
        raise InputError(f"unknown image format {name!r}; choose one of {list(formats)}")
    return formats[name]
