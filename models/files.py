"""Small file helpers shared by training and bundles: atomic writes, checksums, image grids."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written file: either the old one, or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """``rows`` (dicts with the same keys, in order) as a CSV with a header, written atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return atomic_write(path, write)


def save_generator_weights(model: torch.nn.Module, run_dir: str | os.PathLike) -> Path:
    """``run_dir/generator.safetensors``: ``model``'s state dict (contiguous tensors), written atomically."""
    from safetensors.torch import save_file

    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    return atomic_write(Path(run_dir) / "generator.safetensors", lambda tmp: save_file(weights, tmp))


def write_json(path: str | os.PathLike, data: dict) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a ``.npy`` atomically (a reader never sees half a file; no pickled objects)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary's name
            np.save(f, array, allow_pickle=False)

    return atomic_write(path, write)


def read_latents(path: str | os.PathLike) -> np.ndarray:
    """``[n, d]`` latents from a ``.npy`` (memory-mapped) or ``.npz`` (key ``latents``, or its only array).

    Only the container is checked here (2-D, n >= 1); the model checks width, dtype and values.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"input {p} does not exist; pass a .npy or .npz of float32 [n, d]")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            keys = list(data.keys())
            key = "latents" if "latents" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ValueError(f"{p} holds {keys}; name the latents array 'latents'")
            array = data[key]
    else:
        array = np.load(p, mmap_mode="r", allow_pickle=False)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{p} holds shape {list(array.shape)}; expected float32 [n, d] with n >= 1")
    return array


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images ``[batch, 3, H, W]`` in [-1, 1] → uint8 ``[batch, H, W, 3]``."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``[batch, H, W, 3]`` → float32 ``[batch, 3, H, W]`` in [-1, 1] on ``device`` (inverse of
    ``to_uint8`` up to rounding)."""
    array = np.ascontiguousarray(images)
    if not array.flags.writeable:  # e.g. a request's bytes: torch warns on read-only buffers (uint8: a cheap copy)
        array = array.copy()
    tensor = torch.from_numpy(array).to(device)
    return tensor.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def image_grid(images: np.ndarray, columns: int, pad: int = 2, zoom: int = 1) -> Image.Image:
    """uint8 ``[n, H, W, 3]`` → one PIL image, ``columns`` tiles a row, white gutters of ``pad`` pixels."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"image_grid expects uint8 [n, H, W, 3], got {images.dtype} {list(images.shape)}")
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = images[i]
    grid = Image.fromarray(canvas)
    if zoom > 1:
        grid = grid.resize((grid.width * zoom, grid.height * zoom), Image.NEAREST)
    return grid


def labelled_grid(images: np.ndarray, columns: int, row_labels: list[str], column_labels: list[str],
                  zoom: int = 1) -> Image.Image:
    """``image_grid`` at ``zoom`` with a label left of each row and above each column (Pillow's default font)."""
    grid = image_grid(images, columns, zoom=zoom)
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(grid)
    left = 6 + max((int(measure.textlength(label, font=font)) for label in row_labels), default=0)
    top = 16
    canvas = Image.new("RGB", (grid.width + left, grid.height + top), (255, 255, 255))
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    rows = -(-len(images) // columns)
    cell_h, cell_w = grid.height / rows, grid.width / columns
    for r, label in enumerate(row_labels[:rows]):
        draw.text((2, top + (r + 0.5) * cell_h - 6), label, fill=(0, 0, 0), font=font)
    for c, label in enumerate(column_labels[:columns]):
        x = left + (c + 0.5) * cell_w - measure.textlength(label, font=font) / 2
        draw.text((x, 2), label, fill=(0, 0, 0), font=font)
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Training checkpoints (weights, optimiser state, step) for resuming a run.

    Loaded back with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects. Model
    bundles never use this format: they hold safetensors only.
    """
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
