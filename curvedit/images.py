"""Real images in: the rules every path (API, command line, service) applies before a model encodes an image.

Arrays (``Model.encode``, ``Model.edit_images``, raw images over the service) must already be the model's size:
- uint8 ``[n, H, W, 3]`` (RGB), ``[n, H, W, 1]`` or ``[n, H, W]`` (grayscale, copied to the three channels);
- anything else is refused with a ``ValueError`` naming the fix: float arrays (scale to 0..255 and cast), RGBA
  (drop or composite the alpha channel), another size (resize first, e.g. with ``decode_image_file``), an empty
  batch or a 0×0 image.

Image files (PNG, JPEG, … : ``curvedit edit --image``, PNG bytes over the service) are decoded with Pillow and made
to fit: converted to RGB (transparent pixels composited onto black, palettes and grayscale expanded), centre-
cropped to the model's aspect ratio and resized with Lanczos filtering to ``H×W`` when they differ. Files larger
than ``MAX_FILE_BYTES`` or ``MAX_PIXELS``, truncated or not images at all are refused with a ``ValueError``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from curvedit.errors import InputError

MAX_PIXELS = 4096 * 4096  # larger inputs are refused before decoding (decompression bombs included)
MAX_FILE_BYTES = 32 * 1024 * 1024


def check_images(images, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Validate an image batch for a model of ``image_shape`` ``(H, W, 3)``; returns contiguous uint8
    ``[n, H, W, 3]`` (grayscale expanded to RGB)."""
    h, w, _ = image_shape
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise InputError(f"images must be uint8 0..255, got {array.dtype}; convert with "
                         "(x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1]")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise InputError(f"images must be [n, H, W, 3] (or [n, H, W] / [n, H, W, 1] grayscale), got shape "
                         f"{list(array.shape)}; add the batch axis for a single image")
    n, rows, cols, channels = array.shape
    if n == 0:
        raise InputError("empty batch: pass at least one image")
    if rows == 0 or cols == 0:
        raise InputError(f"images are {rows}×{cols}: an image needs at least one pixel")
    if channels == 4:
        raise InputError("images have 4 channels (RGBA); drop the alpha channel (images[..., :3]) or composite "
                         "it onto a background first")
    if channels not in (1, 3):
        raise InputError(f"images have {channels} channels; pass RGB (3) or grayscale (1)")
    if (rows, cols) != (h, w):
        raise InputError(f"images are {rows}×{cols}, this model takes {h}×{w}: resize them first "
                         "(curvedit.images.decode_image_file fits an image file to a model)")
    if channels == 1:
        array = np.repeat(array, 3, axis=3)
    return np.ascontiguousarray(array)


def decode_image_file(data: bytes, image_shape: tuple[int, int, int], what: str = "image") -> np.ndarray:
    """Bytes of an image file → uint8 ``[H, W, 3]`` fitted to ``image_shape`` (rules in the module docstring)."""
    if len(data) == 0:
        raise InputError(f"{what} is empty: pass the bytes of a PNG or JPEG file")
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"{what} is {len(data):,} bytes, over the {MAX_FILE_BYTES:,}-byte limit; send a smaller "
                         "file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"{what} is {image.width}×{image.height} pixels, over the limit of {MAX_PIXELS:,}"
                                 " pixels; downscale it first")
            image.load()
    except InputError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files: one message for all
        raise InputError(f"{what} is not a readable image ({type(exc).__name__}: {exc}); pass a complete PNG "
                         "or JPEG file") from None
    if image.width == 0 or image.height == 0:
        raise InputError(f"{what} is {image.width}×{image.height}: an image needs at least one pixel")
    return fit_image(image, image_shape)


def fit_image(image: Image.Image, image_shape: tuple[int, int, int]) -> np.ndarray:
    """A Pillow image → RGB uint8 ``[H, W, 3]``: alpha composited onto black, centre-cropped to the aspect ratio
    of ``image_shape``, then resized (Lanczos) if its size differs."""
    h, w, _ = image_shape
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (0, 0, 0))
        image.paste(rgba, mask=rgba.getchannel("A"))
    image = image.convert("RGB")
    if image.size != (w, h):
        scale = min(image.width / w, image.height / h)
        crop_w, crop_h = round(w * scale), round(h * scale)
        left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h)).resize((w, h), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


def read_image_files(paths, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Image files on disk → uint8 ``[n, H, W, 3]`` fitted to ``image_shape``."""
    out = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
        out.append(decode_image_file(data, image_shape, what=f"image {path}"))
    if not out:
        raise InputError("no images given: pass at least one --image FILE")
    return np.stack(out)
