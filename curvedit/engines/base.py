"""The engine interface: what computes edits and images for a loaded bundle.

Engines take and return NumPy arrays: latents float32 ``[batch, d]``, amounts float32 ``[batch, K]``,
images uint8 ``[batch, H, W, 3]``. Inputs reaching an engine are already validated by ``curvedit.api.Model``.
``encode`` exists for every engine but works only for generator families that can encode (``can_encode``).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class Engine(Protocol):
    name: str  # "torch", "onnxruntime" or "triton"

    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """``z [batch, d]``, ``amounts [batch, K]`` → edited latents ``[batch, d]``."""
        ...

    def generate(self, z: np.ndarray) -> np.ndarray:
        """``z [batch, d]`` → uint8 images ``[batch, H, W, 3]``."""
        ...

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images ``[batch, H, W, 3]`` → latents float32 ``[batch, d]``."""
        ...


def to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 NumPy array as a tensor on ``device``. A read-only input (a memory-mapped ``.npy``) is copied:
    torch tensors must be writable."""
    return torch.from_numpy(np.require(array, np.float32, ["C", "W"])).to(device)
