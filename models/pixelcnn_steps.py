"""The PixelCNN's sampling loop as two fixed-shape networks, for ONNX Runtime (and any runtime that wants one graph
per step): every input has only a batch axis free, so a graph exported at one batch size runs at any other.

- ``RowStep``: the image so far ``classes [n, 16, 16]``, ``h [n, d]``, ``row [n]`` → the vertical stack's
  pre-activations of the row above ``row``, per layer ``[n, layers, 2c, 16]`` (zeros for row 0): the state every
  pixel of the row needs, computed once per row. Rows at or below ``row`` may hold anything: the vertical stack is
  causal, so they do not reach the row above.
- ``PixelStep``: the current row so far ``row_classes [n, 16]``, that state, ``h`` and ``col [n]`` → the logits
  ``[n, levels³]`` of pixel ``(row, col)``; columns at or right of ``col`` do not reach it.

Together they give the teacher-forced forward's logits at every position (``tests/test_pixelcnn_steps.py``), so a
loop over them (``pixelcnn_sampling.sample_loop``) draws the same images as the torch loops for equal
``(h, seed)`` up to float rounding at a draw's boundary. Row and column are picked by one-hot products, not
indexing, so the graphs have no data-dependent shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from curvedit.models.pixelcnn import PixelCNN


def _one_hot(index: torch.Tensor, size: int) -> torch.Tensor:
    """``index [n]`` (int64) → ``[n, size]`` float; an index outside ``0 … size − 1`` gives a zero row."""
    return (torch.arange(size, device=index.device)[None, :] == index[:, None]).float()


class RowStep(nn.Module):
    """``classes [n, H, W]`` int64, ``h [n, d]``, ``row [n]`` int64 → ``above [n, layers, 2c, W]``."""

    def __init__(self, model: PixelCNN):
        super().__init__()
        self.model = model

    def forward(self, classes: torch.Tensor, h: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        model = self.model
        pick = _one_hot(row - 1, classes.shape[1])  # the row above; row 0 has none: zeros, as the padding
        v = model.embed(classes).permute(0, 3, 1, 2)
        out = []
        for layer, (cond_v, _) in zip(model.layers, model.conditioning(h), strict=True):
            v, pre = layer.vertical(v, cond_v)
            out.append(torch.einsum("nchw,nh->ncw", pre, pick))
        return torch.stack(out, dim=1)


class PixelStep(nn.Module):
    """``row_classes [n, W]`` int64, ``above [n, layers, 2c, W]``, ``h [n, d]``, ``col [n]`` int64 →
    ``logits [n, levels³]``."""

    def __init__(self, model: PixelCNN):
        super().__init__()
        self.model = model

    def forward(self, row_classes: torch.Tensor, above: torch.Tensor, h: torch.Tensor,
                col: torch.Tensor) -> torch.Tensor:
        model = self.model
        x = model.embed(row_classes).permute(0, 2, 1)[:, :, None]  # [n, c, 1, W]
        for i, (layer, (_, cond_h)) in enumerate(zip(model.layers, model.conditioning(h), strict=True)):
            x = layer.horizontal(x, above[:, i, :, None], cond_h)
        x = torch.einsum("ncw,nw->nc", x[:, :, 0], _one_hot(col, row_classes.shape[1]))
        return model.head(x[:, :, None, None])[:, :, 0, 0]


def step_rows(row_step, pixel_step, h: torch.Tensor):
    """``rows`` for ``pixelcnn_sampling.sample_loop`` from two step functions with ``RowStep`` / ``PixelStep``'s
    signatures (torch modules, or ONNX Runtime sessions wrapped to take and return tensors)."""

    def rows(classes: torch.Tensor):
        n = classes.shape[0]
        for r in range(classes.shape[1]):
            above = row_step(classes, h, torch.full((n,), r, dtype=torch.long))
            yield r, lambda col, r=r, above=above: pixel_step(classes[:, r], above, h,
                                                              torch.full((n,), col, dtype=torch.long))

    return rows
