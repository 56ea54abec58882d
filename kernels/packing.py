"""Weight packing: a ``CouplingFlow`` as contiguous per-layer tensors laid out for the kernels.

Built once per (flow, precision, device) and cached by the engine. Linear weights are stored transposed
(``[in, out]``) so a kernel's weight tile is read along contiguous rows; all layers are stacked on a leading axis
so one kernel can walk the whole flow by pointer offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from curvedit.kernels.configs import PRECISIONS, check_precision


@dataclass(frozen=True)
class PackedFlow:
    """A coupling flow's parameters. ``L`` layers, dim ``d = split + rest``, hidden width ``h``.

    w1 ``[L, split, h]``, w2 ``[L, h, h]``, w3 ``[L, h, 2·rest]`` (transposed Linear weights, MLP dtype);
    b1 ``[L, h]``, b2 ``[L, h]``, b3 ``[L, 2·rest]`` (fp32); perm, inv_perm ``[L, d]`` int32, where layer l's
    output column i holds concat column ``perm[l, i]`` (so concat column c is stored at ``inv_perm[l, c]``).
    A flow with a mixing layer ``W`` also carries ``Wᵀ`` and ``W⁻ᵀ`` (fp32, ``[d, d]``), applied as plain
    fp32 matmuls before the first and after the last coupling.
    """

    dim: int
    hidden: int
    layers: int
    clamp: float
    precision: str
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    perm: torch.Tensor
    inv_perm: torch.Tensor
    mixing: torch.Tensor | None = None  # Wᵀ [d, d] fp32 of the flow's mixing layer (x ↦ x @ mixing), if any
    mixing_inverse: torch.Tensor | None = None  # W⁻ᵀ [d, d] fp32

    @property
    def split(self) -> int:
        return self.dim // 2

    @property
    def rest(self) -> int:
        return self.dim - self.dim // 2

    @property
    def device(self) -> torch.device:
        return self.w1.device

    @property
    def mlp_dtype(self) -> torch.dtype:
        return self.w1.dtype

    def to(self, device: str | torch.device) -> PackedFlow:
        """A copy with every tensor on ``device``."""
        tensors = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **tensors)


def _flow_of(module: torch.nn.Module):
    from curvedit.models.flows import CouplingFlow

    flow = getattr(module, "flow", module)  # a DeCurvEd editor holds its flow as .flow
    if not isinstance(flow, CouplingFlow):
        raise ValueError(f"pack_flow needs a CouplingFlow or a DeCurvEd editor, got {type(module).__name__}")
    return flow


@torch.no_grad()
def pack_flow(module: torch.nn.Module, precision: str = "fp32", device: str | torch.device | None = None
              ) -> PackedFlow:
    """Pack a ``CouplingFlow`` (or a ``DeCurvEd`` editor's flow) for the kernels.

    ``precision`` picks the MLP weight dtype (fp32 for "fp32"/"tf32", else bf16/fp16); biases stay fp32.
    ``device`` defaults to the flow's own device.
    """
    check_precision(precision)
    flow = _flow_of(module)
    config = flow.config
    dtype = PRECISIONS[precision][0]
    device = torch.device(device) if device is not None else next(flow.parameters()).device

    def stack(get, transpose: bool, out_dtype: torch.dtype) -> torch.Tensor:
        parts = [get(layer).detach().float() for layer in flow.layers]
        parts = [p.t() for p in parts] if transpose else parts
        return torch.stack(parts).to(device=device, dtype=out_dtype).contiguous()

    return PackedFlow(
        dim=config.dim, hidden=config.hidden, layers=config.layers, clamp=float(config.clamp), precision=precision,
        w1=stack(lambda m: m.net[0].weight, True, dtype), b1=stack(lambda m: m.net[0].bias, False, torch.float32),
        w2=stack(lambda m: m.net[2].weight, True, dtype), b2=stack(lambda m: m.net[2].bias, False, torch.float32),
        w3=stack(lambda m: m.net[4].weight, True, dtype), b3=stack(lambda m: m.net[4].bias, False, torch.float32),
        perm=torch.stack([m.perm for m in flow.layers]).to(device=device, dtype=torch.int32).contiguous(),
        inv_perm=torch.stack([m.inv_perm for m in flow.layers]).to(device=device, dtype=torch.int32).contiguous(),
        mixing=None if flow.mixing is None else flow.mixing.weight.detach().float().t().contiguous().to(device),
        mixing_inverse=None if flow.mixing is None else flow.mixing.inverse_matrix().t().contiguous().to(device),
    )
