"""The engine interface: what computes edits and images for a loaded bundle.

Engines take and return NumPy arrays: latents float32 ``[batch, d]``, amounts float32 ``[batch, K]``,
images uint8 ``[batch, H, W, 3]``. An engine is the runtime below the public ``curvedit.Model``: inputs reaching
it are already checked (by ``Model``, or by the service's request reading), and nothing here checks them again.
``encode`` exists for every engine but works only for generator families that can encode (``can_encode``).

Each engine states its ``shape_policy`` (which batch sizes it really runs: fixed buckets for CUDA graphs and
preallocated kernel buffers, none for ONNX Runtime or eager torch) and is the only place that pads; and its
``fallbacks()``: the graphs or kernels that run on a slower path than the engine's own, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class ShapePolicy:
    """The batch sizes an engine runs. ``buckets`` empty: any size as it is. Otherwise a batch of ``n`` rows
    runs padded to the smallest bucket holding it, and beyond the largest as chunks of the largest."""

    buckets: tuple[int, ...] = ()

    def rows(self, n: int) -> int:
        """The rows the engine computes for a batch of ``n`` (padding included)."""
        if not self.buckets:
            return n
        for b in self.buckets:
            if b >= n:
                return b
        largest = self.buckets[-1]
        return -(-n // largest) * largest


ANY_SHAPE = ShapePolicy()


class Engine(Protocol):
    name: str  # "torch", "onnxruntime", "triton" or "auto"
    shape_policy: ShapePolicy

    def fallbacks(self) -> dict[str, str]:
        """``{graph or kernel: "torch: why"}`` for each part running on a fallback path (empty: none)."""
        ...

    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """``z [batch, d]``, ``amounts [batch, K]`` → edited latents ``[batch, d]``."""
        ...

    def generate(self, z: np.ndarray, seeds: np.ndarray | None = None, check=None) -> np.ndarray:
        """``z [batch, d]`` → uint8 images ``[batch, H, W, 3]``. For generators that sample (``samples``):
        ``seeds`` int64 ``[batch]`` (``None``: the family's default) and ``check(step)``, called between sampling
        steps, which may raise to stop the work; other generators ignore both."""
        ...

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images ``[batch, H, W, 3]`` → latents float32 ``[batch, d]``."""
        ...


def to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 NumPy array as a tensor on ``device``. A read-only input (a memory-mapped ``.npy``) is copied:
    torch tensors must be writable."""
    return torch.from_numpy(np.require(array, np.float32, ["C", "W"])).to(device)


def seed_list(seeds: np.ndarray | None) -> list[int] | None:
    """Per-row sampling seeds ``[batch]`` as the generator's ``render`` takes them (``None`` stays ``None``)."""
    return None if seeds is None else [int(s) for s in seeds]
