"""Column-parallel coupling layers for small batches: each layer's MLP as three launches whose programs split the
output columns. Their pure-torch reference is the fused kernels' (``coupling_reference``, ``edit_reference``):
the same function, computed with other tiles.

Why: the fused kernels (``coupling``, ``edit``) give each program ``BLOCK_B`` rows and carry them through the
whole flow, so at batch <= 16 one program on one SM streams every weight of every layer; run G1 measured 0.91 ms
per d = 512 bf16 edit at every batch from 1 to 1,024 (benchmarks/RESULTS.md). Here a launch's grid is (row
blocks, column blocks): each program reads its rows' whole input but only ``BLOCK_N`` columns of the weights, so a
512-wide layer's weights are streamed by 512 / BLOCK_N programs (SMs) at once. A stage needs every column of the
one before, so stages are separate launches: 3 per layer, 6·L + 1 per edit, meant to be replayed from one CUDA
graph (``TritonEngine(column_buckets_up_to=...)``); launched one by one from Python they cost far more.

    stage 1: h1 = silu(x1 @ W1 + b1)    x1 = x[:, :split] (forward) or y[:, inv_perm[:split]] (inverse)
    stage 2: h2 = silu(h1 @ W2 + b2)
    stage 3: s, t = h2 @ W3 + b3 for one block of columns, s = c·tanh(s/c), then y2 = x2·exp(s) + t (inverse:
             x2 = (y2 − t)·exp(−s)) stored through the permutation; the programs past the last s/t block copy x1.

Forward and inverse run the same kernels with the same tiles in the same order, so the inverse recomputes
bit-identical s and t and undoes the forward to float rounding. No log-determinant: these serve edits only.

Reference: Dinh et al., "Density estimation using Real NVP", ICLR 2017 (the layer).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from curvedit.kernels.configs import PRECISIONS, LaunchConfig, column_config_for, triton_available
from curvedit.kernels.coupling import (
    _affine_columns,
    _check_layer,
    _linear_silu_columns,
    _pass_x1_columns,
    check_latents,
    coupling_reference,
)
from curvedit.kernels.edit import EditPlan, edit, edit_reference
from curvedit.kernels.packing import PackedFlow

__all__ = ["ColumnEditPlan", "column_coupling", "column_edit", "edit_reference"]


@triton.jit
def _dense_silu_kernel(a_ptr, idx_ptr, w_ptr, b_ptr, out_ptr, B,
                       A_STRIDE: tl.constexpr, GATHER: tl.constexpr, K: tl.constexpr, N: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       PRECISION: tl.constexpr):
    """Stages 1 and 2 for one (row block, column block): the fused kernels' dense + SiLU on ``BLOCK_N`` output
    columns."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    _linear_silu_columns(a_ptr, A_STRIDE, idx_ptr, GATHER, w_ptr, b_ptr, out_ptr, rows, rows < B,
                         tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N), K, N, BLOCK_B, BLOCK_N, BLOCK_K,
                         PRECISION)


@triton.jit
def _affine_kernel(src, dst, h2, w3, b3, inv_perm, clamp, B,
                   D: tl.constexpr, SPLIT: tl.constexpr, REST: tl.constexpr, H: tl.constexpr,
                   REVERSE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Stage 3 for one (row block, column block): column blocks below cdiv(REST, BLOCK_N) compute s and t and
    transform x2; the ones after them pass x1 through. Both store through the layer's permutation."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    block = tl.program_id(1)
    rest_blocks = (REST + BLOCK_N - 1) // BLOCK_N
    if block < rest_blocks:
        _affine_columns(src, dst, h2, w3, b3, inv_perm, clamp, rows, row_mask,
                        block * BLOCK_N + tl.arange(0, BLOCK_N), D, SPLIT, REST, H, REVERSE, BLOCK_B, BLOCK_N,
                        BLOCK_K, PRECISION)
    else:
        cols = (block - rest_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        _pass_x1_columns(src, dst, inv_perm, rows, row_mask, cols, D, SPLIT, REVERSE)


def _layer(src: torch.Tensor, dst: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor, packed: PackedFlow,
           layer: int, reverse: bool, config: LaunchConfig) -> None:
    """Layer ``layer`` of the flow (or its inverse) from ``src [B, d]`` into ``dst [B, d]``: three launches."""
    p, batch = packed, src.shape[0]
    tiles = {**config.meta(), "PRECISION": PRECISIONS[p.precision][1], "num_warps": config.num_warps,
             "num_stages": config.num_stages}
    row_blocks = triton.cdiv(batch, config.block_b)
    hidden_grid = (row_blocks, triton.cdiv(p.hidden, config.block_n))
    _dense_silu_kernel[hidden_grid](src, p.inv_perm[layer], p.w1[layer], p.b1[layer], h1, batch, A_STRIDE=p.dim,
                                    GATHER=reverse, K=p.split, N=p.hidden, **tiles)
    _dense_silu_kernel[hidden_grid](h1, p.inv_perm[layer], p.w2[layer], p.b2[layer], h2, batch, A_STRIDE=p.hidden,
                                    GATHER=False, K=p.hidden, N=p.hidden, **tiles)
    affine_grid = (row_blocks, triton.cdiv(p.rest, config.block_n) + triton.cdiv(p.split, config.block_n))
    _affine_kernel[affine_grid](src, dst, h2, p.w3[layer], p.b3[layer], p.inv_perm[layer], p.clamp, batch,
                                D=p.dim, SPLIT=p.split, REST=p.rest, H=p.hidden, REVERSE=reverse, **tiles)


class ColumnEditPlan(EditPlan):
    """``EditPlan`` (fixed buffers ``z [bucket, d]``, ``t [bucket, K]``, ``out [bucket, d]``, ``launch()``) on the
    column-parallel kernels, so a CUDA graph captured around ``launch()`` can be replayed."""

    def __init__(self, packed: PackedFlow, bucket: int, directions: int):
        super().__init__(packed, bucket, directions)
        self.config = column_config_for(packed.precision)
        self._pong = torch.zeros(bucket, packed.dim, device=packed.device)

    def launch(self) -> None:
        p = self.packed
        # z is only read (graph replays rerun this); the last layer writes straight into the output.
        src = self.z if p.mixing is None else torch.matmul(self.z, p.mixing, out=self._mixed)
        final = self.out if p.mixing is None else self._edited
        steps = [(layer, False) for layer in range(p.layers)]
        steps += [(layer, True) for layer in reversed(range(p.layers))]
        for i, (layer, reverse) in enumerate(steps):
            dst = final if i == len(steps) - 1 else (self._tmp, self._pong)[i % 2]
            _layer(src, dst, self._h1, self._h2, p, layer, reverse, self.config)
            if i == p.layers - 1:  # f(z) is complete: shift it by t (zero-padded to d)
                dst[:, : self.directions].add_(self.t)
            src = dst
        if p.mixing is not None:
            torch.matmul(final, p.mixing_inverse, out=self.out)


def column_edit(z: torch.Tensor, amounts: torch.Tensor, packed: PackedFlow, bucket: bool = True) -> torch.Tensor:
    """``z' = f⁻¹(f(z) + t)`` on the column-parallel kernels; otherwise as ``kernels.edit.edit``."""
    return edit(z, amounts, packed, bucket, plan_type=ColumnEditPlan)


def column_coupling(x: torch.Tensor, packed: PackedFlow, layer: int, reverse: bool = False) -> torch.Tensor:
    """One coupling layer (``reverse``: its inverse) on the column-parallel kernels: ``x [B, d]`` → ``[B, d]``,
    no log-determinant (``coupling_forward`` has it). Runs ``coupling_reference`` where Triton cannot."""
    x = check_latents(x, packed)
    _check_layer(layer, packed)
    if not triton_available(x.device):
        return coupling_reference(x, packed, layer, reverse)[0]
    y = torch.empty_like(x)
    h1 = torch.empty(x.shape[0], packed.hidden, device=x.device, dtype=packed.mlp_dtype)
    _layer(x, y, h1, torch.empty_like(h1), packed, layer, reverse, column_config_for(packed.precision))
    return y
