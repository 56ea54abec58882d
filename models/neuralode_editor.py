"""NeuralODE latent transforms: one learned vector field per direction, integrated for the edit's amount.

Direction k has a field ``g_k(z) = b_k + MLP_k(z)`` (``d → hidden → hidden → d``, SiLU, last layer starting at
zero, so a new field is the constant ``b_k``). Editing by ``t`` integrates ``dz/ds = g_k(z)`` from ``s = 0`` to
``s = t`` with ``steps`` fixed steps of classical Runge–Kutta (RK4), step ``h = t / steps`` (a negative ``t``
integrates backwards, so ``−t`` undoes ``t`` up to the integrator's error). The step count is fixed, so the loop
unrolls into one traced graph whose shape does not depend on the amounts; an amount of exactly 0 leaves z
unchanged. Several directions in one edit are applied one after another in index order: fields do not commute
in general (their Lie brackets are not zero), so the result depends on that order.

Supervised training warm-starts the constant parts ``b_k`` at the minimum-norm linear directions of the factor
readings (the pseudo-inverse of the least-squares chart, like DeCurvEd's mixing layer), so the fields start where
a linear editor ends and the MLPs learn the position-dependent part.

Reference: Khrulkov et al., "Latent Transformations via NeuralODEs for GAN-based Image Editing", ICCV 2021.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from curvedit.models.editors import Editor, register_editor

Field = Callable[[torch.Tensor], torch.Tensor]


def rk4(field: Field, z: torch.Tensor, t: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate ``dz/ds = field(z)`` from 0 to ``t [batch, 1]`` per row with ``steps`` RK4 steps → ``[batch, d]``.

    Each row has its own step ``h = t / steps``, so every row takes the same number of steps and one graph serves
    every amount; a row with ``t = 0`` comes back unchanged.
    """
    h = t / steps
    for _ in range(steps):
        k1 = field(z)
        k2 = field(z + 0.5 * h * k1)
        k3 = field(z + 0.5 * h * k2)
        k4 = field(z + h * k3)
        z = z + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return z


@register_editor
class NeuralODEEditor(Editor):
    """``z [batch, d]``, ``amounts [batch, K]`` → ``z'``: K MLP vector fields, integrated with fixed-step RK4."""

    kind = "neuralode"
    commutative = False
    approach = "local"

    def __init__(self, latent_dim: int, directions: list[str], hidden: int = 64, steps: int = 8, seed: int = 0):
        super().__init__(latent_dim, directions)
        if hidden < 1 or steps < 1:
            raise ValueError(f"need hidden >= 1 and steps >= 1, got hidden={hidden}, steps={steps}")
        self.hidden, self.steps, self.seed = hidden, steps, seed
        k, d, rng = self.num_directions, latent_dim, torch.Generator().manual_seed(seed)

        def uniform(*shape: int, fan_in: int) -> nn.Parameter:  # nn.Linear's default initialisation
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter((2.0 * torch.rand(*shape, generator=rng) - 1.0) * bound)

        # Unsupervised training starts from random orthonormal constant fields; supervised ones are warm-started.
        self.base = nn.Parameter(torch.linalg.qr(torch.randn(d, k, generator=rng))[0].T.contiguous())  # [K, d]
        self.w1, self.b1 = uniform(k, d, hidden, fan_in=d), uniform(k, hidden, fan_in=d)
        self.w2, self.b2 = uniform(k, hidden, hidden, fan_in=hidden), uniform(k, hidden, fan_in=hidden)
        self.w3 = nn.Parameter(torch.zeros(k, hidden, d))

    def config(self) -> dict:
        return {**super().config(), "hidden": self.hidden, "steps": self.steps, "seed": self.seed}

    def field(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """``g_k(z)``: ``[batch, d]`` → ``[batch, d]``."""
        h = F.silu(z @ self.w1[k] + self.b1[k])
        h = F.silu(h @ self.w2[k] + self.b2[k])
        return self.base[k] + h @ self.w3[k]

    def edit(self, z: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
        for k in range(self.num_directions):
            z = rk4(lambda x, k=k: self.field(x, k), z, amounts[:, k : k + 1], self.steps)
        return z

    def row_field(self, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``g_{k_i}(z_i)`` for every row i at once: ``z [batch, d]``, ``k [batch]`` (long) → ``[batch, d]``.

        Evaluates all K fields on every row in three batched products and keeps each row's own: K times the
        arithmetic of one field, but a handful of large operations instead of K small ones (faster on a CPU)."""
        h = F.silu(torch.matmul(z, self.w1) + self.b1[:, None])  # [K, batch, hidden]
        h = F.silu(torch.bmm(h, self.w2) + self.b2[:, None])
        out = torch.bmm(h, self.w3) + self.base[:, None]  # [K, batch, d]
        return out[k, torch.arange(z.shape[0], device=z.device)]

    def training_edit(self, z: torch.Tensor, amounts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training moves one direction per row: then each row integrates only its own field (the same result as
        ``edit``, whose other directions have amount 0, for K times less work). Otherwise ``edit``."""
        moved = amounts != 0
        if moved.sum(1).max() > 1:
            return self.edit(z, amounts), z.new_zeros(())
        k = moved.float().argmax(1)
        t = amounts.gather(1, k[:, None])
        return rk4(lambda x: self.row_field(x, k), z, t, self.steps), z.new_zeros(())

    @property
    def wants_warm_start(self) -> bool:
        return True

    @torch.no_grad()
    def warm_start(self, z: torch.Tensor, factors: torch.Tensor) -> None:
        """``b_k`` = column k of the pseudo-inverse of the least-squares chart ``factors ≈ R z + c``
        (``R [K, d]``): the shortest constant step moving factor k by one unit and, to first order, no other."""
        n, d = z.shape
        design = torch.cat([z, z.new_ones(n, 1)], dim=1).double()
        chart = torch.linalg.lstsq(design, factors.double()).solution[:d].t()  # [K, d]
        self.base.copy_(torch.linalg.pinv(chart).t().float())
