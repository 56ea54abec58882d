"""Affine coupling flows: an exactly invertible map with a closed-form log-determinant.

Sign convention (every transform, both directions): ``forward(x) -> (y, logabsdet)`` with
``logabsdet = log|det ∂y/∂x|``, and ``inverse(y) -> (x, logabsdet)`` with ``logabsdet = log|det ∂x/∂y|``;
so ``forward(x)[1] == -inverse(forward(x)[0])[1]``. ``logabsdet`` is shaped ``[batch]``.

Reference: Dinh et al., "Density estimation using Real NVP", ICLR 2017.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FlowConfig:
    dim: int
    hidden: int = 64
    layers: int = 8
    clamp: float = 2.0
    perm_seed: int = 0
    mixing: bool = False  # a learned invertible linear map before the couplings (see ``InvertibleLinear``)

    def __post_init__(self):
        if self.dim < 2:
            raise ValueError(f"a coupling flow needs dim >= 2, got {self.dim}")
        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"hidden and layers must be >= 1, got hidden={self.hidden} layers={self.layers}")
        if self.clamp <= 0:
            raise ValueError(f"clamp must be > 0, got {self.clamp}")

    def to_dict(self) -> dict:
        return asdict(self)


def soft_clamp(s: torch.Tensor, clamp: float) -> torch.Tensor:
    """``clamp · tanh(s / clamp)``: keeps log-scales in (-clamp, clamp) so exp never overflows."""
    return clamp * torch.tanh(s / clamp)


class InvertibleLinear(nn.Module):
    """``y = W x`` with ``W`` a learned ``[dim, dim]`` matrix that starts at the identity (or at a given matrix).

    Couplings mix coordinates only through their MLPs, so an oblique linear chart takes them many steps to
    build; this layer gives the flow that chart directly. ``logabsdet = log|det W|``. The inverse solves with
    ``W`` in training (the regulariser on ``log|det|`` keeps it well away from singular) and multiplies by a
    cached ``W⁻¹`` otherwise.
    Reference: Kingma & Dhariwal, "Glow", NeurIPS 2018 (the invertible 1×1 convolution).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))
        self._inverse: tuple[tuple, torch.Tensor] | None = None  # (weight version, W⁻¹) for inference

    def _logabsdet(self, batch: int, logdet: bool, like: torch.Tensor) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight)[1].expand(batch) if logdet else like.new_zeros(batch)

    def forward(self, x: torch.Tensor, logdet: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``logdet=False`` skips the determinant (returns zeros): edits do not need it."""
        return x @ self.weight.t(), self._logabsdet(x.shape[0], logdet, x)

    def inverse(self, y: torch.Tensor, logdet: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Solves with ``W`` when gradients flow to it (training); otherwise multiplies by ``W⁻¹``, inverted once
        per change of ``W`` and cached."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            x = torch.linalg.solve(self.weight, y.t()).t()
        else:
            x = y @ self.cached_inverse().t()
        return x, -self._logabsdet(y.shape[0], logdet, y)

    def cached_inverse(self) -> torch.Tensor:
        """``W⁻¹`` for inference, inverted once per change of ``W`` (fill it before capturing a CUDA graph)."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.device, w.dtype)  # in-place updates (optimiser, load) bump _version
        if self._inverse is None or self._inverse[0] != key:
            self._inverse = (key, self.inverse_matrix())
        return self._inverse[1]

    def inverse_matrix(self) -> torch.Tensor:
        """``W⁻¹`` as a float32 matrix, inverted in float64 (what the exported graphs and kernels apply)."""
        return torch.linalg.inv(self.weight.detach().double()).to(self.weight.dtype)


class AffineCoupling(nn.Module):
    """One layer: split ``x = [x1, x2]`` (``x1`` the first ``dim // 2`` coordinates), then

        y = P · [x1, x2 · exp(s(x1)) + t(x1)],   y[:, i] = concat[:, perm[i]]

    where an MLP ``x1 → hidden → hidden → 2·len(x2)`` (SiLU) gives ``[s_raw, t]`` and ``s = soft_clamp(s_raw)``.
    The MLP's last layer starts at zero, so a new layer is the permutation alone.
    """

    def __init__(self, dim: int, hidden: int, clamp: float, perm: torch.Tensor):
        super().__init__()
        self.dim = dim
        self.split = dim // 2
        self.clamp = clamp
        rest = dim - self.split
        self.net = nn.Sequential(
            nn.Linear(self.split, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * rest),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.register_buffer("perm", perm.clone())
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _scale_shift(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_raw, shift = self.net(x1).chunk(2, dim=1)
        return soft_clamp(s_raw, self.clamp), shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        s, shift = self._scale_shift(x1)
        y = torch.cat([x1, x2 * torch.exp(s) + shift], dim=1).index_select(1, self.perm)
        return y, s.sum(dim=1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = y.index_select(1, self.inv_perm)
        x1, y2 = u[:, : self.split], u[:, self.split :]
        s, shift = self._scale_shift(x1)
        return torch.cat([x1, (y2 - shift) * torch.exp(-s)], dim=1), -s.sum(dim=1)


class CouplingFlow(nn.Module):
    """A stack of ``layers`` affine couplings with fixed random permutations: ``[batch, dim] → [batch, dim]``,
    after an optional ``InvertibleLinear`` (``config.mixing``): ``f = C_L ∘ … ∘ C_1 ∘ W``.

    Permutations come from ``perm_seed`` and are stored as buffers, so saved weights describe the flow fully.
    """

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        rng = torch.Generator().manual_seed(config.perm_seed)
        self.layers = nn.ModuleList(
            AffineCoupling(config.dim, config.hidden, config.clamp, torch.randperm(config.dim, generator=rng))
            for _ in range(config.layers)
        )
        self.mixing = InvertibleLinear(config.dim) if config.mixing else None

    def forward(self, x: torch.Tensor, logdet: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``logdet=False`` skips the mixing layer's determinant (its share of ``logabsdet`` is then 0)."""
        logabsdet = x.new_zeros(x.shape[0])
        if self.mixing is not None:
            x, logabsdet = self.mixing(x, logdet)
        for layer in self.layers:
            x, ld = layer(x)
            logabsdet = logabsdet + ld
        return x, logabsdet

    def inverse(self, y: torch.Tensor, logdet: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        logabsdet = y.new_zeros(y.shape[0])
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y)
            logabsdet = logabsdet + ld
        if self.mixing is not None:
            y, ld = self.mixing.inverse(y, logdet)
            logabsdet = logabsdet + ld
        return y, logabsdet
