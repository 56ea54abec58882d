"""The whole DeCurvEd edit ``z' = f⁻¹(f(z) + t)`` in one kernel launch, with its pure-torch reference.

Rows of the batch are independent through every layer, so one program carries its ``BLOCK_B`` rows through all
``L`` forward layers, the shift ``+t`` (``t [B, K]`` padded with zeros to ``[B, d]``) and all ``L`` inverse
layers, ping-ponging the latent between the output buffer and a scratch buffer. No grid-wide synchronisation is
needed, only block barriers, and the edit costs one launch whatever the depth of the flow. Forward and inverse
use the same tiles (``curvedit.kernels.coupling``), so ``edit(+t)`` then ``edit(-t)`` returns ``z``.
A flow's mixing layer ``W`` (if any) is not fused: ``EditPlan.launch`` multiplies by ``Wᵀ`` before the kernel
and by ``W⁻ᵀ`` after it (two fp32 ``torch.matmul``s, inside the same CUDA graph when graphs are on). They follow
torch's global matmul precision: with ``torch.backends.cuda.matmul.allow_tf32`` on, they run in TF32 whatever
the kernel's ``precision`` (PyTorch's default is off).

Batch buckets: ``EditPlan`` owns fixed buffers for a power-of-two batch, so a GPU run can be captured once per
bucket in a CUDA graph and replayed.

Reference: Aoshima & Matsubara, "Deep Curvilinear Editing", CVPR 2023.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from curvedit.kernels.configs import PRECISIONS, bucket_size, triton_available
from curvedit.kernels.coupling import _coupling_rows, check_latents, coupling_reference, launch
from curvedit.kernels.packing import PackedFlow


@triton.jit
def _edit_kernel(z, t, out, tmp, h1, h2, w1, b1, w2, b2, w3, b3, inv_perm, clamp, B, K,
                 L: tl.constexpr, D: tl.constexpr, SPLIT: tl.constexpr, REST: tl.constexpr, H: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    row0 = tl.program_id(0) * BLOCK_B
    rows = row0 + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    for c0 in range(0, D, BLOCK_N):  # z is only read, so the kernel can be rerun (autotuning, graph replay)
        cols = c0 + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (cols < D)[None, :]
        offsets = rows[:, None] * D + cols[None, :]
        tl.store(out + offsets, tl.load(z + offsets, mask=mask), mask=mask)
    tl.debug_barrier()
    src = out
    dst = tmp
    for layer in range(L):
        _coupling_rows(src, dst, out, h1, h2, w1 + layer * (SPLIT * H), b1 + layer * H, w2 + layer * (H * H),
                       b2 + layer * H, w3 + layer * (H * 2 * REST), b3 + layer * (2 * REST), inv_perm + layer * D,
                       clamp, row0, B, D, SPLIT, REST, H, False, False, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)
        tl.debug_barrier()
        src, dst = dst, src
    # The loop runs to the constexpr D, masked at K: triton 3.6's interpreter cannot range() to a runtime int.
    for c0 in range(0, D, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (cols < K)[None, :]
        v = tl.load(src + rows[:, None] * D + cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")
        v += tl.load(t + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
        tl.store(src + rows[:, None] * D + cols[None, :], v, mask=mask)
    tl.debug_barrier()
    for step in range(L):
        layer = L - 1 - step
        _coupling_rows(src, dst, out, h1, h2, w1 + layer * (SPLIT * H), b1 + layer * H, w2 + layer * (H * H),
                       b2 + layer * H, w3 + layer * (H * 2 * REST), b3 + layer * (2 * REST), inv_perm + layer * D,
                       clamp, row0, B, D, SPLIT, REST, H, True, False, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)
        tl.debug_barrier()
        src, dst = dst, src
    # 2·L swaps: the edited latent ends in `out`.


def check_amounts(amounts: torch.Tensor, z: torch.Tensor, packed: PackedFlow) -> torch.Tensor:
    """Validate ``amounts [batch, K]`` float32, ``1 <= K <= d``, same batch and device as ``z``."""
    if not isinstance(amounts, torch.Tensor):
        raise ValueError(f"amounts must be a torch.Tensor, got {type(amounts).__name__}")
    if amounts.ndim != 2 or amounts.shape[0] != z.shape[0] or not 1 <= amounts.shape[1] <= packed.dim:
        raise ValueError(f"amounts must be [{z.shape[0]}, K] with 1 <= K <= {packed.dim}, "
                         f"got {list(amounts.shape)}")
    if amounts.dtype != torch.float32:
        raise ValueError(f"amounts must be float32, got {amounts.dtype}")
    if amounts.device != z.device:
        raise ValueError(f"amounts is on {amounts.device} but z is on {z.device}")
    return amounts.contiguous()


class EditPlan:
    """Fixed buffers for edits of one batch bucket: inputs ``z [bucket, d]``, ``t [bucket, K]``, output
    ``out [bucket, d]`` and the kernel's scratch. ``launch()`` reads ``z``/``t`` and writes ``out``; the
    addresses never change, so a CUDA graph captured around ``launch()`` can be replayed after refilling ``z``
    and ``t``."""

    def __init__(self, packed: PackedFlow, bucket: int, directions: int):
        if bucket < 1 or not 1 <= directions <= packed.dim:
            raise ValueError(f"need bucket >= 1 and 1 <= directions <= {packed.dim}, got {bucket}, {directions}")
        device, d, h = packed.device, packed.dim, packed.hidden
        self.packed, self.bucket, self.directions = packed, bucket, directions
        self.z = torch.zeros(bucket, d, device=device)
        self.t = torch.zeros(bucket, directions, device=device)
        self.out = torch.zeros(bucket, d, device=device)
        self._tmp = torch.empty(bucket, d, device=device)
        # With a mixing layer the kernel edits W z, and W⁻¹ maps its result back into `out`.
        self._mixed = torch.zeros(bucket, d, device=device) if packed.mixing is not None else None
        self._edited = torch.zeros(bucket, d, device=device) if packed.mixing is not None else None
        self._h1 = torch.empty(bucket, h, device=device, dtype=packed.mlp_dtype)
        self._h2 = torch.empty_like(self._h1)

    def launch(self) -> None:
        p = self.packed
        z, out = self.z, self.out
        if p.mixing is not None:
            z, out = torch.matmul(self.z, p.mixing, out=self._mixed), self._edited
        launch(_edit_kernel, self.bucket, p.precision,
               z, self.t, out, self._tmp, self._h1, self._h2, p.w1, p.b1, p.w2, p.b2, p.w3, p.b3,
               p.inv_perm, p.clamp, self.bucket, self.directions,
               L=p.layers, D=p.dim, SPLIT=p.split, REST=p.rest, H=p.hidden, PRECISION=PRECISIONS[p.precision][1])
        if p.mixing is not None:
            torch.matmul(out, p.mixing_inverse, out=self.out)


def edit_reference(z: torch.Tensor, amounts: torch.Tensor, packed: PackedFlow) -> torch.Tensor:
    """Pure-torch edit on packed weights (MLP precision emulated like the kernel): ``[B, d]`` → ``[B, d]``."""
    x = z if packed.mixing is None else z @ packed.mixing
    for layer in range(packed.layers):
        x = coupling_reference(x, packed, layer)[0]
    x = x + torch.nn.functional.pad(amounts, (0, packed.dim - amounts.shape[1]))
    for layer in reversed(range(packed.layers)):
        x = coupling_reference(x, packed, layer, reverse=True)[0]
    return x if packed.mixing is None else x @ packed.mixing_inverse


def edit(z: torch.Tensor, amounts: torch.Tensor, packed: PackedFlow, bucket: bool = True,
         plan_type: type[EditPlan] = EditPlan) -> torch.Tensor:
    """``z' = f⁻¹(f(z) + t)``: ``z [B, d]``, ``amounts [B, K]`` (float32, on the flow's device) → ``[B, d]``.

    With ``bucket`` the batch is padded with zero rows to a power of two (at least 16 on a GPU, the smallest
    tensor-core tile) and only the real rows are returned; ``plan_type`` picks the kernels (``EditPlan``: one fused
    launch; ``columns.ColumnEditPlan``: column-parallel). Runs the reference where Triton cannot run.
    """
    z = check_latents(z, packed, "z")
    amounts = check_amounts(amounts, z, packed)
    if not triton_available(z.device):
        return edit_reference(z, amounts, packed)
    batch = z.shape[0]
    size = bucket_size(batch, 16 if z.device.type == "cuda" else 1) if bucket else batch
    plan = plan_type(packed, size, amounts.shape[1])
    plan.z[:batch].copy_(z)
    plan.t[:batch].copy_(amounts)
    plan.launch()
    return plan.out[:batch]
