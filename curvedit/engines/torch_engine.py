"""The reference engine: the bundle's PyTorch modules, run eagerly."""

from __future__ import annotations

import numpy as np
import torch

from curvedit.bundle import Bundle
from curvedit.models.files import to_uint8


class TorchEngine:
    name = "torch"

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.generator = bundle.generator.to(self.device).eval()
        self.editors = {name: editor.to(self.device).eval() for name, editor in bundle.editors.items()}

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        # "W": a read-only input (a memory-mapped .npy) is copied, since torch tensors must be writable
        return torch.from_numpy(np.require(array, np.float32, ["C", "W"])).to(self.device)

    @torch.inference_mode()
    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        edited = self.editors[editor].edit(self._tensor(z), self._tensor(amounts))
        return edited.float().cpu().numpy()

    @torch.inference_mode()
    def generate(self, z: np.ndarray) -> np.ndarray:
        return to_uint8(self.generator(self._tensor(z)))
