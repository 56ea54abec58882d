"""The engine interface: what computes edits and images for a loaded bundle.

Engines take and return NumPy arrays: latents float32 ``[batch, d]``, amounts float32 ``[batch, K]``,
images uint8 ``[batch, H, W, 3]``. Inputs reaching an engine are already validated by ``curvedit.api.Model``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Engine(Protocol):
    name: str  # "torch", "onnxruntime" or "triton"

    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """``z [batch, d]``, ``amounts [batch, K]`` → edited latents ``[batch, d]``."""
        ...

    def generate(self, z: np.ndarray) -> np.ndarray:
        """``z [batch, d]`` → uint8 images ``[batch, H, W, 3]``."""
        ...
