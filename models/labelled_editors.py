"""Fitted linear editors that read factors to find their directions: attribute vectors and a generator's own axes.

- ``attrdiff`` (Radford et al.): direction k is the mean latent of the samples whose factor k is high minus the
  mean of those whose factor k is low (upper and lower ``quantile`` of the factor readings on generated images),
  scaled so that an amount of +1 moves factor k by +1 standard deviation. Linear and commutative; needs labels
  (the factor regressor on renders, or a generator's true factors), no training.
- ``axes``: the generator's own latent coordinates (``code_axes()``: an InfoGAN's codes, a VAE's latent axes),
  edit = add ``t_k`` to coordinate ``axes[k]``. Supervised, each factor is matched with the axis that moves it
  most purely (greedy, purest pair first, each axis used once); the amounts stay the generator's own units, so
  the matching's gain (|Δ factor| per unit) is reported, not calibrated away. This is how a model trained under
  constraints (β-VAE, InfoGAN) is edited: Cartesian axes, no editor to learn.

Both are ``z' = z + A t`` with ``A [d, K]`` stored as a buffer.

Reference: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional GANs",
ICLR 2016 (§6.3, vector arithmetic); Higgins et al., "β-VAE", ICLR 2017; Chen et al., "InfoGAN", NeurIPS 2016.
"""

from __future__ import annotations

import torch

from curvedit.models.editors import register_editor
from curvedit.models.linear_editors import _FittedLinear


@register_editor
class AttributeVectorEditor(_FittedLinear):
    """``z [batch, d] + amounts [batch, K] @ Aᵀ``: column k is a group-mean difference of latents (see the module
    docstring), fitted by ``models.fit_editors`` from factor readings."""

    kind = "attrdiff"


@register_editor
class AxesEditor(_FittedLinear):
    """``z' = z + Σ_k t_k e_{axes[k]}``: direction k adds its amount to latent coordinate ``axes[k]``."""

    kind = "axes"
    approach = "cartesian"

    def __init__(self, latent_dim: int, directions: list[str], axes: list[int] | None = None):
        super().__init__(latent_dim, directions)
        axes = list(range(self.num_directions)) if axes is None else [int(a) for a in axes]
        if len(axes) != self.num_directions or len(set(axes)) != len(axes) or not all(
                0 <= a < latent_dim for a in axes):
            raise ValueError(f"axes must be {self.num_directions} distinct coordinates in 0..{latent_dim - 1}, "
                             f"got {axes}")
        self.axes = axes
        self.weight[axes, torch.arange(self.num_directions)] = 1.0

    def config(self) -> dict:
        return {**super().config(), "axes": self.axes}


def group_difference(z: torch.Tensor, factors: torch.Tensor, quantile: float = 0.25) -> torch.Tensor:
    """``z [n, d]``, ``factors [n, K]`` → ``[d, K]``: column k is ``mean(z | factor k in its top quantile) −
    mean(z | factor k in its bottom quantile)``."""
    if not 0 < quantile <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile}")
    if z.shape[0] != factors.shape[0] or z.shape[0] < 4:
        raise ValueError(f"need as many latents as factor rows (>= 4), got {z.shape[0]} and {factors.shape[0]}")
    low = torch.quantile(factors, quantile, dim=0)
    high = torch.quantile(factors, 1.0 - quantile, dim=0)
    columns = []
    for k in range(factors.shape[1]):
        upper, lower = factors[:, k] >= high[k], factors[:, k] <= low[k]
        columns.append(z[upper].mean(0) - z[lower].mean(0))
    return torch.stack(columns, dim=1)


def match_greedy(share: torch.Tensor, targets: list[int]) -> dict[int, int]:
    """``share [C, F]`` (candidate c's share of its total factor response going to factor j) → ``{factor j:
    candidate c}`` for every target factor: the purest free pair first, each candidate used once."""
    if share.shape[0] < len(targets):
        raise ValueError(f"{len(targets)} factors to match but only {share.shape[0]} candidates")
    chosen: dict[int, int] = {}
    free_candidates, free_factors = set(range(share.shape[0])), set(targets)
    while free_factors:
        c, j = max(((c, j) for c in sorted(free_candidates) for j in sorted(free_factors)),
                   key=lambda cj: share[cj].item())
        chosen[j] = c
        free_candidates.discard(c)
        free_factors.discard(j)
    return chosen
