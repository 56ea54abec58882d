"""The coupling flow's export forms: a feature-major one, the same math as ``models/flows.py`` with the state
held as ``[dim, batch]`` instead of ``[batch, dim]`` (``edit.onnx``), and a batch-major edit for small batches
(``rows_edit.onnx``, ``BatchMajorEdit``), both with the mixing layer's inverse as a constant matrix.

Why: every coupling layer permutes coordinates. In the batch-major layout that permutation is a column gather
(``index_select`` on axis 1), which ONNX Runtime's CPU ``Gather`` performs element by element: at d = 512 and
batch 256 the 16 gathers of one edit took 7.7 of its 46 ms. Feature-major, the same permutation gathers whole
contiguous rows, and each linear layer becomes ``W @ X`` with the weight as ONNX MatMul's constant left operand.
The graph transposes once on the way in and once on the way out. A mixing layer ``W`` (``InvertibleLinear``)
becomes ``W @ X`` on the way in and ``W⁻¹ @ X`` on the way out, with ``W⁻¹`` inverted once at export.
"""

from __future__ import annotations

import torch
from torch import nn

from curvedit.models.editors import DeCurvEd
from curvedit.models.flows import AffineCoupling, soft_clamp


def _mlp_columns(layer: AffineCoupling, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's MLP on ``x1 [split, batch]`` → ``(s, shift)``, each ``[rest, batch]``."""
    h = x1
    for linear, act in ((layer.net[0], True), (layer.net[2], True), (layer.net[4], False)):
        h = linear.weight @ h + linear.bias[:, None]
        if act:
            h = torch.nn.functional.silu(h)
    s_raw, shift = h.chunk(2, dim=0)
    return soft_clamp(s_raw, layer.clamp), shift


def forward_columns(editor: DeCurvEd, state: torch.Tensor) -> torch.Tensor:
    """``f`` on a feature-major state ``[dim, batch]``."""
    if editor.flow.mixing is not None:
        state = editor.flow.mixing.weight @ state
    for layer in editor.flow.layers:
        x1, x2 = state[: layer.split], state[layer.split :]
        s, shift = _mlp_columns(layer, x1)
        state = torch.cat([x1, x2 * torch.exp(s) + shift], dim=0).index_select(0, layer.perm)
    return state


def inverse_columns(editor: DeCurvEd, state: torch.Tensor, mixing_inverse: torch.Tensor | None) -> torch.Tensor:
    """``f⁻¹`` on a feature-major state ``[dim, batch]``; ``mixing_inverse`` is ``W⁻¹`` when the flow mixes."""
    for layer in reversed(editor.flow.layers):
        u = state.index_select(0, layer.inv_perm)
        x1, y2 = u[: layer.split], u[layer.split :]
        s, shift = _mlp_columns(layer, x1)
        state = torch.cat([x1, (y2 - shift) * torch.exp(-s)], dim=0)
    if mixing_inverse is not None:
        state = mixing_inverse @ state
    return state


class FeatureMajorEncode(nn.Module):
    """``z [batch, d]`` → ``v = f(z) [batch, d]``, computed feature-major."""

    def __init__(self, editor: DeCurvEd):
        super().__init__()
        self.editor = editor
        # W⁻¹ is inverted here, once, and enters the graph as a constant (ONNX has no matrix inverse).
        mixing = editor.flow.mixing
        self.register_buffer("mixing_inverse", None if mixing is None else mixing.inverse_matrix())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return forward_columns(self.editor, z.t()).t()


class FeatureMajorDecode(FeatureMajorEncode):
    """``v [batch, d]`` → ``z = f⁻¹(v) [batch, d]``, computed feature-major."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return inverse_columns(self.editor, v.t(), self.mixing_inverse).t()


class FeatureMajorEdit(FeatureMajorEncode):
    """``z [batch, d]``, ``t [batch, K]`` → ``z' = f⁻¹(f(z) + [t, 0]) [batch, d]``, computed feature-major."""

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = forward_columns(self.editor, z.t()) + self.editor.shift(t).t()
        return inverse_columns(self.editor, v, self.mixing_inverse).t()


class BatchMajorEdit(FeatureMajorEncode):
    """``z [batch, d]``, ``t [batch, K]`` → ``z'``, computed batch-major with the flow's own layers: the
    small-batch twin of ``FeatureMajorEdit`` (``rows_edit*.onnx``). ``W⁻¹`` enters as the same constant."""

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flow = self.editor.flow
        state = z if flow.mixing is None else z @ flow.mixing.weight.t()
        for layer in flow.layers:
            state = layer(state)[0]
        state = state + self.editor.shift(t)
        for layer in reversed(flow.layers):
            state = layer.inverse(state)[0]
        return state if self.mixing_inverse is None else state @ self.mixing_inverse.t()
