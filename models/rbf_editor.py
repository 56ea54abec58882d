"""WarpedGANSpace: per direction, a potential made of RBF support dipoles; edits climb its normalised gradient.

Potential of direction k: ``f_k(z) = Σ_i α_{k,i} exp(−γ_k ‖z − c_{k,i}‖²)`` with support vectors ``c_{k,i}``
in dipole pairs (α = +1 and −1 at ``m ± r u``). Its gradient, in closed form:
``∇f_k(z) = −2 γ_k Σ_i α_{k,i} exp(−γ_k ‖z − c_{k,i}‖²) (z − c_{k,i})``.

An edit by ``t`` takes ``steps`` steps ``z ← z + (t/steps) ∇f_k/‖∇f_k‖``: the path has length ``|t|`` in Z and
a negative ``t`` goes down the gradient. The gradient is computed analytically, never with autograd, so the
edit runs under ``torch.inference_mode()`` and traces into an exported graph. Several directions in one edit are
applied one after another in index order: the result depends on that order (vector fields do not commute),
and ``−t`` only approximately undoes ``t``.

Reference: Tzelepis, Tzimiropoulos & Patras, "WarpedGANSpace: Finding Non-linear RBF Paths in GAN Latent
Space", ICCV 2021.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from curvedit.models.editors import Editor, register_editor


@register_editor
class RBFEditor(Editor):
    """``z [batch, d]``, ``amounts [batch, K]`` → ``z'``; K potentials of ``dipoles`` dipole pairs each.

    A fixed number of ``steps`` per direction (the step length scales with the amount) keeps the graph's
    shape independent of the amounts, so one traced graph serves every batch.
    """

    kind = "rbf"
    commutative = False
    approach = "local"

    def __init__(self, latent_dim: int, directions: list[str], dipoles: int = 4, steps: int = 8,
                 radius: float = 1.0, gamma: float = 0.25, seed: int = 0):
        super().__init__(latent_dim, directions)
        if dipoles < 1 or steps < 1 or radius <= 0 or gamma <= 0:
            raise ValueError(f"need dipoles >= 1, steps >= 1, radius > 0, gamma > 0; got {dipoles}, {steps}, "
                             f"{radius}, {gamma}")
        self.dipoles, self.steps, self.radius, self.gamma, self.seed = dipoles, steps, radius, gamma, seed
        rng = torch.Generator().manual_seed(seed)
        k = self.num_directions
        centres = 0.5 * torch.randn(k, dipoles, latent_dim, generator=rng)
        axes = torch.randn(k, dipoles, latent_dim, generator=rng)
        axes = axes / axes.norm(dim=-1, keepdim=True)
        # [K, 2P, d]: the positive poles, then the negative poles.
        self.support = nn.Parameter(torch.cat([centres + radius * axes, centres - radius * axes], dim=1))
        self.register_buffer("alphas", torch.cat([torch.ones(k, dipoles), -torch.ones(k, dipoles)], dim=1))
        self.log_gamma = nn.Parameter(torch.full((k,), math.log(gamma)))

    def config(self) -> dict:
        return {**super().config(), "dipoles": self.dipoles, "steps": self.steps, "radius": self.radius,
                "gamma": self.gamma, "seed": self.seed}

    def potential(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """``f_k(z)``, ``[batch]`` (for tests and plots; edits use only the gradient)."""
        diff = z[:, None, :] - self.support[k][None]
        return (self.alphas[k] * torch.exp(-self.log_gamma[k].exp() * diff.pow(2).sum(-1))).sum(1)

    def gradient(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """``∇f_k(z)`` in closed form, ``[batch, d]``."""
        gamma = self.log_gamma[k].exp()
        diff = z[:, None, :] - self.support[k][None]  # [batch, 2P, d]
        weights = self.alphas[k] * torch.exp(-gamma * diff.pow(2).sum(-1))  # [batch, 2P]
        return -2.0 * gamma * (weights[:, :, None] * diff).sum(1)

    def step_direction(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """The unit step ``∇f_k/‖∇f_k‖``, ``[batch, d]``."""
        grad = self.gradient(z, k)
        return grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-20)

    def edit(self, z: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
        for k in range(self.num_directions):
            step = amounts[:, k : k + 1] / self.steps
            for _ in range(self.steps):
                z = z + step * self.step_direction(z, k)
        return z
