"""A generator whose true chart is known: latent → a fixed bijection ψ with a curvature knob → factors → renders.

``ψ(z) = S_L ∘ … ∘ S_1 (A z)``: an oblique linear map ``A`` (a random, fixed, well-conditioned 6×6 matrix),
then L additive coupling shears. Shear l permutes the coordinates, splits them into halves ``(a, b)`` and sets
``b ← b + c · sin(a W_l + β_l) V_l``; ``c`` is the curvature. Each shear is exactly invertible (subtract the same
term), so ``ψ⁻¹`` is exact, and at ``c = 0`` the world is linear (``ψ = A``). The output ``u = ψ(z)`` is the six
standardised factors (see ``renderer``); the image is ``render(unstandardize(u))``.

The ideal editor is ``f = ψ`` itself (``ChartEditor``): factor space is Cartesian, so an edit by ``t`` along
factor k moves factor k by exactly ``t`` and nothing else, in any order. A linear editor can match it only at
``c = 0``; ``linear_ceiling`` computes the best purity a linear editor reaches at a given curvature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from curvedit.models.editors import Editor, register_editor
from curvedit.models.families import GeneratorFamily, register_family
from curvedit.models.renderer import FACTOR_NAMES, NUM_FACTORS, render, unstandardize

_MIN_SCALE = 0.05  # raw shape half-length; only the far tails of the latent prior reach it


@dataclass(frozen=True)
class KnownChartConfig:
    latent_dim: int = NUM_FACTORS
    image_size: int = 32
    curvature: float = 0.0
    layers: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.latent_dim != NUM_FACTORS:
            raise ValueError(f"the known-chart generator has latent_dim = {NUM_FACTORS} (one per factor), "
                             f"got {self.latent_dim}")
        if self.curvature < 0 or self.layers < 1:
            raise ValueError(f"need curvature >= 0 and layers >= 1, got {self.curvature}, {self.layers}")

    def to_dict(self) -> dict:
        return asdict(self)


@register_family
class KnownChart(GeneratorFamily):
    """The ``known-chart`` family: ``z [batch, 6]`` → images ``[batch, 3, 32, 32]`` in [-1, 1]; ``chart(z)`` →
    true factors ``[batch, 6]`` (``true_factors()``), so training and measurement need no regressor.

    ``fc`` is the linear map ``A`` (a frozen ``nn.Linear`` without bias), so SeFa applies as to the DCGAN.
    Analytic: nothing to train.
    """

    family = "known-chart"
    config_class = KnownChartConfig

    def __init__(self, config: KnownChartConfig = KnownChartConfig()):
        super().__init__(config)
        d, half = config.latent_dim, config.latent_dim // 2
        rng = torch.Generator().manual_seed(config.seed)
        q1 = torch.linalg.qr(torch.randn(d, d, generator=rng))[0]
        q2 = torch.linalg.qr(torch.randn(d, d, generator=rng))[0]
        matrix = q1 @ torch.diag(torch.linspace(0.7, 1.3, d)) @ q2  # oblique, condition number 1.86
        self.fc = nn.Linear(d, d, bias=False).requires_grad_(False)
        self.fc.weight.copy_(matrix)
        self.register_buffer("fc_inverse", torch.linalg.inv(matrix.double()).float())
        perms = torch.stack([torch.randperm(d, generator=rng) for _ in range(config.layers)])
        self.register_buffer("perms", perms)
        self.register_buffer("inv_perms", perms.argsort(dim=1))
        self.register_buffer("w", 1.5 * torch.randn(config.layers, half, d - half, generator=rng) / half**0.5)
        self.register_buffer("beta", 6.283 * torch.rand(config.layers, d - half, generator=rng))
        self.register_buffer("v", torch.randn(config.layers, d - half, d - half, generator=rng) / half**0.5)

    def _shear(self, x: torch.Tensor, layer: int, sign: float) -> torch.Tensor:
        half = self.config.latent_dim // 2
        x = x.index_select(1, self.perms[layer])
        a, b = x[:, :half], x[:, half:]
        b = b + sign * self.config.curvature * torch.sin(a @ self.w[layer] + self.beta[layer]) @ self.v[layer]
        return torch.cat([a, b], dim=1).index_select(1, self.inv_perms[layer])

    def chart(self, z: torch.Tensor) -> torch.Tensor:
        """``ψ``: latents ``[batch, 6]`` → standardised factors ``[batch, 6]``."""
        u = self.fc(z)
        for layer in range(self.config.layers):
            u = self._shear(u, layer, 1.0)
        return u

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """``ψ⁻¹``: standardised factors ``[batch, 6]`` → latents ``[batch, 6]`` (exact)."""
        for layer in reversed(range(self.config.layers)):
            u = self._shear(u, layer, -1.0)
        return u @ self.fc_inverse.T

    def linear_map(self) -> torch.Tensor:
        return self.fc.weight

    def true_factors(self) -> nn.Module:
        return ChartFactors(self)

    def evaluation_facts(self, steps: int, known: dict) -> dict:
        ceiling = known.get("linear_ceiling") or linear_ceiling(self, steps=steps)
        return {"curvature": self.config.curvature, "linear_ceiling": ceiling}

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raw = unstandardize(self.chart(z))
        # The renderer needs a positive size; clamping only the far tails keeps the factors themselves exact.
        raw = torch.cat([raw[:, :2], raw[:, 2:3].clamp_min(_MIN_SCALE), raw[:, 3:]], dim=1)
        return render(raw, self.config.image_size) * 2.0 - 1.0


class ChartFactors(nn.Module):
    """``z [batch, 6]`` → true factors ``[batch, 6]``: plays the role of ``regressor ∘ generator`` in training
    and measurement, with no rendering and no regressor error."""

    def __init__(self, chart: KnownChart):
        super().__init__()
        self.chart = chart
        self.config = chart.config

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.chart.chart(z)


@register_editor
class ChartEditor(Editor):
    """The known-chart generator's ideal editor: ``z' = ψ⁻¹(ψ(z) + Σ_k t_k e_{factor(k)})``.

    Directions must be factor names. Commutative and curvilinear; purity 1 by construction.
    """

    kind = "chart"
    needs_training = False
    approach = "curvilinear"

    def __init__(self, latent_dim: int, directions: list[str], curvature: float = 0.0, layers: int = 3,
                 seed: int = 0):
        super().__init__(latent_dim, directions)
        unknown = [d for d in directions if d not in FACTOR_NAMES]
        if unknown:
            raise ValueError(f"chart directions must be factor names {list(FACTOR_NAMES)}, got {unknown}")
        self.chart = KnownChart(KnownChartConfig(latent_dim, 32, curvature, layers, seed))
        select = torch.zeros(len(directions), NUM_FACTORS)
        select[torch.arange(len(directions)), torch.tensor([FACTOR_NAMES.index(d) for d in directions])] = 1.0
        self.register_buffer("select", select)

    def config(self) -> dict:
        c = self.chart.config
        return {**super().config(), "curvature": c.curvature, "layers": c.layers, "seed": c.seed}

    def edit(self, z: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
        return self.chart.inverse(self.chart.chart(z) + amounts @ self.select)


def chart_editor(generator: KnownChart, directions: list[str] | None = None) -> ChartEditor:
    """The true chart of ``generator`` as an editor (default: all six factors)."""
    if not isinstance(generator, KnownChart):
        raise ValueError(f"the 'chart' editor exists only for a known-chart generator, not {generator.family!r}")
    c = generator.config
    return ChartEditor(c.latent_dim, list(directions or FACTOR_NAMES), c.curvature, c.layers, c.seed).eval()


def _response(factors: ChartFactors, matrix: torch.Tensor, z: torch.Tensor, amount: float) -> torch.Tensor:
    """``M [K, 6]``: mean |Δ true factor| under ``z + ±amount · matrix[:, k]`` (half +, half −)."""
    n = z.shape[0]
    signs = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)[None, :, None]
    moved = z[None] + amount * signs * matrix.T[:, None, :]  # [K, n, d]
    before = factors(z)
    after = factors(moved.reshape(-1, z.shape[1])).reshape(matrix.shape[1], n, -1)
    return (after - before[None]).abs().mean(1)


def linear_ceiling(generator: KnownChart, samples: int = 1024, steps: int = 400, amount: float = 1.0,
                   gain_band: tuple[float, float] = (0.5, 1.5), seed: int = 0) -> dict:
    """The best per-factor purity a linear editor reaches on ``generator`` at ``amount``, measured like
    ``measure.purity`` on true factors.

    Method: for each factor k, optimise a free column ``a_k`` (Adam, ``steps`` steps on ``samples`` latents,
    best iterate kept) to maximise ``M[k, k] / Σ_j M[k, j]``, starting from ``A⁻¹ e_k`` (the exact answer at
    curvature 0). In a curved world purity depends on the gain ``M[k, k]`` (per unit amount): the shears'
    off-target moves are bounded while the on-target move grows with the step, so a huge step looks purer, and a
    tiny one tends to the purity of the Jacobian at a point. The ceiling is therefore taken over a gain band,
    kept by a barrier: ``gain_band`` (default 0.5–1.5) contains the gains of every supervised editor here, which
    are trained towards gain 1. Purity is then measured on fresh latents. This is the optimum of a non-convex
    problem, so strictly a lower bound on the true ceiling; the evaluation also reports every trained linear
    editor, and a trained one above this number would show the bound is loose.
    Returns ``{"purity": [6], "mean_purity", "gain": [6], "matrix": [d][6]}``.
    """
    factors = ChartFactors(generator).requires_grad_(False)
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, generator.config.latent_dim, generator=rng)
    held_out = torch.randn(samples, generator.config.latent_dim, generator=rng)
    matrix = generator.fc_inverse.clone().requires_grad_(True)
    opt = torch.optim.Adam([matrix], lr=0.01)
    eye = torch.eye(NUM_FACTORS)
    best, best_loss = matrix.detach().clone(), float("inf")
    for _ in range(steps + 1):
        response = _response(factors, matrix, z, amount)
        gain = (response * eye).sum(1)
        outside = (gain_band[0] - gain).clamp_min(0) + (gain - gain_band[1]).clamp_min(0)
        loss = (1.0 - gain / response.sum(1)).mean() + 10.0 * outside.pow(2).mean()
        # Keep the best iterate: near an exact optimum (curvature 0) Adam's normalised steps only add noise.
        if loss.item() < best_loss:
            best, best_loss = matrix.detach().clone(), loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    matrix = best
    with torch.no_grad():
        response = _response(factors, matrix, held_out, amount)
        gain = (response * eye).sum(1)
        per_factor = gain / response.sum(1)
    return {"purity": per_factor.tolist(), "mean_purity": per_factor.mean().item(), "gain": gain.tolist(),
            "matrix": matrix.tolist()}
