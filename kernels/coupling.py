"""Fused affine coupling layer (forward and inverse) with its pure-torch reference.

One program owns ``BLOCK_B`` rows of the batch and runs the whole layer for them: gather ``x1``, the MLP
``split → h → h → 2·rest`` (bias and SiLU fused as epilogues), the soft clamp ``s = c·tanh(s_raw / c)``, the fp32
affine step, and the permutation applied on store. A 512-wide layer's weights (1 MB in fp32) do not fit one
block's shared memory, so weights are streamed tile by tile and the hidden activations go through a small global
scratch buffer (L2-resident) between the three matrix products, separated by block-wide barriers.

Forward and inverse run the same tiles in the same order (no split-K, no atomics), so the inverse recomputes
bit-identical ``s`` and ``t`` from the bit-identical ``x1`` and undoes the forward to float rounding.

Reference: Dinh et al., "Density estimation using Real NVP", ICLR 2017.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from curvedit.kernels.configs import PRECISIONS, LaunchConfig, configs_for, triton_available
from curvedit.kernels.packing import PackedFlow


@triton.jit
def _tanh(x):
    # exp of a non-positive number never overflows; tl has no tanh that also runs in the interpreter.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _linear_silu_columns(a_ptr, A_STRIDE: tl.constexpr, idx_ptr, GATHER: tl.constexpr, w_ptr, b_ptr, out_ptr,
                         rows, row_mask, cols_n, K: tl.constexpr, N: tl.constexpr, BLOCK_B: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """out[rows, cols_n] = silu(A[rows, src] @ W[:, cols_n] + b[cols_n]) for one block of output columns; A's
    columns go through ``idx_ptr`` when GATHER."""
    n_mask = cols_n < N
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = cols_k < K
        if GATHER:  # noqa: SIM108 (a constexpr branch; kept as a statement, which every triton lowers)
            src_cols = tl.load(idx_ptr + cols_k, mask=k_mask, other=0)
        else:
            src_cols = cols_k
        # .cg reads through L2: in the fused kernels the scratch was written by other threads of this block
        # before the barrier (the column kernels' inputs come from an earlier launch, where it costs nothing).
        a = tl.load(a_ptr + rows[:, None] * A_STRIDE + src_cols[None, :],
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0, cache_modifier=".cg")
        w = tl.load(w_ptr + cols_k[:, None] * N + cols_n[None, :],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a.to(w.dtype), w, acc, input_precision=PRECISION)
    acc += tl.load(b_ptr + cols_n, mask=n_mask, other=0.0)[None, :]
    h = acc / (1.0 + tl.exp(-acc))
    tl.store(out_ptr + rows[:, None] * N + cols_n[None, :], h.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & n_mask[None, :])


@triton.jit
def _linear_silu(a_ptr, A_STRIDE: tl.constexpr, idx_ptr, GATHER: tl.constexpr, w_ptr, b_ptr, out_ptr,
                 rows, row_mask, K: tl.constexpr, N: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """out[rows, :N] = silu(A[rows, cols] @ W[K, N] + b), one block of output columns after another."""
    for n0 in range(0, N, BLOCK_N):
        _linear_silu_columns(a_ptr, A_STRIDE, idx_ptr, GATHER, w_ptr, b_ptr, out_ptr, rows, row_mask,
                             n0 + tl.arange(0, BLOCK_N), K, N, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)


@triton.jit
def _affine_columns(src, dst, h2, w3, b3, inv_perm, clamp, rows, row_mask, cols_j,
                    D: tl.constexpr, SPLIT: tl.constexpr, REST: tl.constexpr, H: tl.constexpr,
                    REVERSE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr):
    """For one block ``cols_j`` of x2's columns: s, t = h2 @ W3 + b3, s = c·tanh(s/c), then y2 = x2·exp(s) + t
    (inverse: x2 = (y2 − t)·exp(−s)), stored through the permutation. Returns each row's sum of s over the block
    (its share of log|det|)."""
    j_mask = cols_j < REST
    acc_s = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    acc_t = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        cols_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = cols_k < H
        a = tl.load(h2 + rows[:, None] * H + cols_k[None, :], mask=row_mask[:, None] & k_mask[None, :],
                    other=0.0, cache_modifier=".cg")
        w_mask = k_mask[:, None] & j_mask[None, :]
        w_s = tl.load(w3 + cols_k[:, None] * (2 * REST) + cols_j[None, :], mask=w_mask, other=0.0)
        w_t = tl.load(w3 + cols_k[:, None] * (2 * REST) + REST + cols_j[None, :], mask=w_mask, other=0.0)
        a = a.to(w_s.dtype)
        acc_s = tl.dot(a, w_s, acc_s, input_precision=PRECISION)
        acc_t = tl.dot(a, w_t, acc_t, input_precision=PRECISION)
    s_raw = acc_s + tl.load(b3 + cols_j, mask=j_mask, other=0.0)[None, :]
    shift = acc_t + tl.load(b3 + REST + cols_j, mask=j_mask, other=0.0)[None, :]
    s = clamp * _tanh(s_raw / clamp)
    mask = row_mask[:, None] & j_mask[None, :]
    concat_cols = SPLIT + cols_j
    perm_cols = tl.load(inv_perm + concat_cols, mask=j_mask, other=0)
    if REVERSE:
        y2 = tl.load(src + rows[:, None] * D + perm_cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(dst + rows[:, None] * D + concat_cols[None, :], (y2 - shift) * tl.exp(-s), mask=mask)
    else:
        x2 = tl.load(src + rows[:, None] * D + concat_cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(dst + rows[:, None] * D + perm_cols[None, :], x2 * tl.exp(s) + shift, mask=mask)
    return tl.sum(tl.where(mask, s, 0.0), axis=1)


@triton.jit
def _pass_x1_columns(src, dst, inv_perm, rows, row_mask, cols, D: tl.constexpr, SPLIT: tl.constexpr,
                     REVERSE: tl.constexpr):
    """x1 passes through unchanged, moved by the permutation (inverse: moved back), for one block of columns."""
    c_mask = cols < SPLIT
    mask = row_mask[:, None] & c_mask[None, :]
    perm_cols = tl.load(inv_perm + cols, mask=c_mask, other=0)
    if REVERSE:
        x1 = tl.load(src + rows[:, None] * D + perm_cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(dst + rows[:, None] * D + cols[None, :], x1, mask=mask)
    else:
        x1 = tl.load(src + rows[:, None] * D + cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(dst + rows[:, None] * D + perm_cols[None, :], x1, mask=mask)


@triton.jit
def _coupling_rows(src, dst, ld_ptr, h1, h2, w1, b1, w2, b2, w3, b3, inv_perm, clamp, row0, B,
                   D: tl.constexpr, SPLIT: tl.constexpr, REST: tl.constexpr, H: tl.constexpr,
                   REVERSE: tl.constexpr, WRITE_LD: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """One coupling layer for rows ``row0 .. row0+BLOCK_B`` of ``src [B, D]`` into ``dst [B, D]``."""
    rows = row0 + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    # Forward reads x1 = x[:, :SPLIT]; inverse reads u = y[:, inv_perm], i.e. x1 = y[:, inv_perm[:SPLIT]].
    _linear_silu(src, D, inv_perm, REVERSE, w1, b1, h1, rows, row_mask, SPLIT, H,
                 BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)
    tl.debug_barrier()
    _linear_silu(h1, H, inv_perm, False, w2, b2, h2, rows, row_mask, H, H, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)
    tl.debug_barrier()
    ld = tl.zeros([BLOCK_B], dtype=tl.float32)
    for j0 in range(0, REST, BLOCK_N):
        ld += _affine_columns(src, dst, h2, w3, b3, inv_perm, clamp, rows, row_mask, j0 + tl.arange(0, BLOCK_N),
                              D, SPLIT, REST, H, REVERSE, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)
    for c0 in range(0, SPLIT, BLOCK_N):
        _pass_x1_columns(src, dst, inv_perm, rows, row_mask, c0 + tl.arange(0, BLOCK_N), D, SPLIT, REVERSE)
    if WRITE_LD:
        if REVERSE:
            ld = -ld
        tl.store(ld_ptr + rows, ld, mask=row_mask)


@triton.jit
def _coupling_kernel(src, dst, ld_ptr, h1, h2, w1, b1, w2, b2, w3, b3, inv_perm, clamp, B,
                     D: tl.constexpr, SPLIT: tl.constexpr, REST: tl.constexpr, H: tl.constexpr,
                     REVERSE: tl.constexpr, WRITE_LD: tl.constexpr, BLOCK_B: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    _coupling_rows(src, dst, ld_ptr, h1, h2, w1, b1, w2, b2, w3, b3, inv_perm, clamp, tl.program_id(0) * BLOCK_B,
                   B, D, SPLIT, REST, H, REVERSE, WRITE_LD, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)


_TUNED: dict[tuple[int, str], object] = {}


def launch(kernel, grid_rows: int, precision: str, *args, **constexprs) -> None:
    """Launch ``kernel`` over ``cdiv(grid_rows, BLOCK_B)`` programs: one fixed configuration under the
    interpreter, else an autotuner over the precision's GPU configurations, keyed on batch and sizes."""
    configs = configs_for(precision)
    if len(configs) == 1:
        config = configs[0]
        grid = (triton.cdiv(grid_rows, config.block_b),)
        kernel[grid](*args, **constexprs, **config.meta(), num_warps=config.num_warps,
                     num_stages=config.num_stages)
        return
    key = (id(kernel), precision)
    # REVERSE is deliberately not in the tuning key: a layer's forward and inverse must run the same tiles (the
    # same accumulation order), or the inverse would not recompute bit-identical s and t.
    if key not in _TUNED:
        _TUNED[key] = triton.autotune(
            configs=[triton.Config(c.meta(), num_warps=c.num_warps, num_stages=c.num_stages) for c in configs],
            key=["B", "D", "H"],
        )(kernel)
    _TUNED[key][lambda meta: (triton.cdiv(grid_rows, meta["BLOCK_B"]),)](*args, **constexprs)


def tuned_config_name(kernel, precision: str) -> str | None:
    """The tile configuration the autotuner chose at its last launch of ``kernel`` at ``precision``, e.g.
    ``"b16n64k64w4s3"``; None before any autotuned launch (under the interpreter there is no autotuner)."""
    best = getattr(_TUNED.get((id(kernel), precision)), "best_config", None)
    if best is None:
        return None
    meta = best.kwargs
    return LaunchConfig(meta["BLOCK_B"], meta["BLOCK_N"], meta["BLOCK_K"], best.num_warps, best.num_stages).name


def check_latents(x: torch.Tensor, packed: PackedFlow, name: str = "x") -> torch.Tensor:
    """Validate a ``[batch, dim]`` float32 tensor on the packed flow's device; returns it contiguous."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != packed.dim:
        raise ValueError(f"{name} must be [batch >= 1, {packed.dim}], got {list(x.shape)}")
    if x.dtype != torch.float32:
        raise ValueError(f"{name} must be float32 (the latent state is always fp32), got {x.dtype}")
    if x.device != packed.device:
        raise ValueError(f"{name} is on {x.device} but the packed flow is on {packed.device}; move one of them")
    if 2 * x.shape[0] * max(packed.dim, packed.hidden) >= 2**31:  # x2: a padded bucket can double the batch
        raise ValueError(f"batch {x.shape[0]} is too large for the kernels' 32-bit offsets; split it")
    return x.contiguous()


def _check_layer(layer: int, packed: PackedFlow) -> None:
    if not 0 <= layer < packed.layers:
        raise ValueError(f"layer must be in [0, {packed.layers}), got {layer}")


def mlp_reference(x1: torch.Tensor, packed: PackedFlow, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's MLP the way the kernel computes it: inputs rounded to the MLP dtype, fp32 accumulation,
    hidden activations stored in the MLP dtype. ``x1 [B, split]`` → ``(s_raw, shift)``, each ``[B, rest]``."""
    dtype = packed.mlp_dtype

    def linear(a, w, b):
        return a.to(dtype).float() @ w.float() + b

    h = torch.nn.functional.silu(linear(x1, packed.w1[layer], packed.b1[layer])).to(dtype)
    h = torch.nn.functional.silu(linear(h, packed.w2[layer], packed.b2[layer])).to(dtype)
    out = linear(h, packed.w3[layer], packed.b3[layer])
    return out[:, : packed.rest], out[:, packed.rest :]


def coupling_reference(x: torch.Tensor, packed: PackedFlow, layer: int, reverse: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch coupling layer on packed weights: ``x [B, d]`` → ``(y [B, d], logabsdet [B])``."""
    split, perm, inv_perm = packed.split, packed.perm[layer].long(), packed.inv_perm[layer].long()
    u = x.index_select(1, inv_perm) if reverse else x
    x1, x2 = u[:, :split], u[:, split:]
    s_raw, shift = mlp_reference(x1, packed, layer)
    s = packed.clamp * torch.tanh(s_raw / packed.clamp)
    if reverse:
        return torch.cat([x1, (x2 - shift) * torch.exp(-s)], dim=1), -s.sum(dim=1)
    return torch.cat([x1, x2 * torch.exp(s) + shift], dim=1).index_select(1, perm), s.sum(dim=1)


def _coupling(x: torch.Tensor, packed: PackedFlow, layer: int, reverse: bool, logabsdet: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = check_latents(x, packed)
    _check_layer(layer, packed)
    if not triton_available(x.device):
        y, ld = coupling_reference(x, packed, layer, reverse)
        return y, (ld if logabsdet else None)
    batch, hidden = x.shape[0], packed.hidden
    y = torch.empty_like(x)
    ld = torch.empty(batch, device=x.device, dtype=torch.float32) if logabsdet else y
    h1 = torch.empty(batch, hidden, device=x.device, dtype=packed.mlp_dtype)
    h2 = torch.empty_like(h1)
    launch(_coupling_kernel, batch, packed.precision,
           x, y, ld, h1, h2, packed.w1[layer], packed.b1[layer], packed.w2[layer], packed.b2[layer],
           packed.w3[layer], packed.b3[layer], packed.inv_perm[layer], packed.clamp, batch,
           D=packed.dim, SPLIT=packed.split, REST=packed.rest, H=hidden, REVERSE=reverse, WRITE_LD=logabsdet,
           PRECISION=PRECISIONS[packed.precision][1])
    return y, (ld if logabsdet else None)


def coupling_forward(x: torch.Tensor, packed: PackedFlow, layer: int, logabsdet: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Layer ``layer`` of the packed flow: ``x [B, d]`` float32 → ``(y [B, d], logabsdet [B] or None)``,
    ``logabsdet = log|det ∂y/∂x|``. Runs the Triton kernel where it can, else the reference."""
    return _coupling(x, packed, layer, reverse=False, logabsdet=logabsdet)


def coupling_inverse(y: torch.Tensor, packed: PackedFlow, layer: int, logabsdet: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of ``coupling_forward``: ``y [B, d]`` → ``(x [B, d], log|det ∂x/∂y| [B] or None)``."""
    return _coupling(y, packed, layer, reverse=True, logabsdet=logabsdet)
