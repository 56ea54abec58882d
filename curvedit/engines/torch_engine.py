"""The reference engine: the bundle's PyTorch modules, run eagerly."""

from __future__ import annotations

import numpy as np
import torch

from curvedit.bundle import Bundle
from curvedit.engines.base import ANY_SHAPE, seed_list, to_tensor
from curvedit.models.files import from_uint8, to_uint8


class TorchEngine:
    name = "torch"
    shape_policy = ANY_SHAPE

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.generator = bundle.generator.to(self.device).eval()
        self.editors = {name: editor.to(self.device).eval() for name, editor in bundle.editors.items()}

    def fallbacks(self) -> dict[str, str]:
        return {}  # this is the reference path itself

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return to_tensor(array, self.device)

    @torch.inference_mode()
    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        edited = self.editors[editor].edit(self._tensor(z), self._tensor(amounts))
        return edited.float().cpu().numpy()

    @torch.inference_mode()
    def generate(self, z: np.ndarray, seeds: np.ndarray | None = None, check=None) -> np.ndarray:
        return to_uint8(self.generator.render(self._tensor(z), seed_list(seeds), check))

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.generator.encode(from_uint8(images, self.device)).float().cpu().numpy()


class CompiledTorchEngine(TorchEngine):
    """The torch engine with each editor's ``edit`` under ``torch.compile`` (dynamic batch axis, compiled on
    first use per editor; the generator stays eager). A candidate of the ``auto`` engine when asked for."""

    name = "torch.compile"

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu"):
        super().__init__(bundle, device)
        self._compiled: dict[str, object] = {}

    @torch.inference_mode()
    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        function = self._compiled.get(editor)
        if function is None:
            from curvedit.models.flows import InvertibleLinear

            module = self.editors[editor]
            for sub in module.modules():  # a mixing layer's cached inverse, filled eagerly (not in the graph)
                if isinstance(sub, InvertibleLinear):
                    sub.cached_inverse()
            function = self._compiled[editor] = torch.compile(module.edit, dynamic=True)
        return function(self._tensor(z), self._tensor(amounts)).float().cpu().numpy()
