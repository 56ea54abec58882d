"""Cross-domain alignment: map one generator's latent space onto another's without paired latents.

Both models have a supervised DeCurvEd editor whose directions are the same named factors (``smile``,
``eye_size``, …), and whose edit coordinates ``v = f(z)`` put factor k on axis k. The translation is

    translate(z) = f_t⁻¹( A( f_s(z) ) ),   A(u, r) = (u + b, W r + c)

where ``u`` are the K factor axes, ``r`` the remaining ``d − K`` coordinates, ``b`` a shift per factor and
``(W, c)`` an affine map of the rest. ``A`` never mixes factor axes with the rest and moves each factor axis by a
constant, so editing then translating equals translating then editing, by construction:
``translate(edit_s(z, t)) = f_t⁻¹(A(f_s(z)) + t) = edit_t(translate(z), t)`` (to float error). ``A`` is invertible
wherever ``W`` is, so one map also translates back, target to source, exactly: ``f_s⁻¹(A⁻¹(f_t(z)))``.

Training needs no pairs: source latents ``z ~ N(0, I)`` are rendered by the source generator and read by the
source's factor regressor; the translated latents are rendered by the target generator and read by the target's
regressor; the loss is the mean absolute difference of the two readings (*factor consistency*, both in
standardised units) plus ``prior_weight`` × a term that keeps translated latents typical under the target's
``N(0, I)`` prior: ``log(1 + max(0, ‖z‖²/d − 2))``, zero on the typical shell, logarithmic beyond it. The flows,
generators and regressors are frozen. Training starts from prior matching (each chart of its own prior samples:
factor axes shifted by the difference of the medians, the other axes scaled and shifted to the target's median
and interquartile range): the unsupervised axes of two charts can differ in scale by orders of magnitude, and
the identity map then sends latents far out of the target's prior.

Reference: the alignment idea follows Ladron de Guevara et al., "Cross-modal latent space alignment for
image to avatar translation", 2023; the construction through DeCurvEd coordinates is this project's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from curvedit.models.editors import DeCurvEd

ALIGNMENT_KIND = "factor-shift"


@dataclass(frozen=True)
class AlignmentTrainConfig:
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    prior_weight: float = 0.1
    clip: float = 1.0  # gradient norm: a chart's far tails can send one batch's loss far off
    match_moments: bool = True  # start from prior matching (``LatentAlignment.match_moments``), not the identity
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2 or self.lr <= 0 or self.prior_weight < 0:
            raise ValueError(f"need steps >= 1, batch_size >= 2, lr > 0, prior_weight >= 0; got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class LatentAlignment(nn.Module):
    """``A`` in edit coordinates: ``v [batch, d]`` → ``v' [batch, d]``; a shift on the first K (factor) axes, an
    affine map on the other ``d − K``. Starts as the identity."""

    def __init__(self, latent_dim: int, directions: list[str]):
        super().__init__()
        if not 0 < len(directions) <= latent_dim:
            raise ValueError(f"need 1..{latent_dim} directions, got {len(directions)}")
        self.latent_dim, self.directions = latent_dim, list(directions)
        rest = latent_dim - len(directions)
        self.shift = nn.Parameter(torch.zeros(len(directions)))
        self.rest_weight = nn.Parameter(torch.eye(rest))
        self.rest_bias = nn.Parameter(torch.zeros(rest))

    def config(self) -> dict:
        return {"latent_dim": self.latent_dim, "directions": self.directions}

    @torch.no_grad()
    def match_moments(self, source_v: torch.Tensor, target_v: torch.Tensor) -> None:
        """Start from prior matching: ``source_v`` and ``target_v`` ``[n, d]`` are both charts of their own prior
        samples; shift each factor axis by the difference of the medians, and map each remaining axis affinely so
        its median and interquartile range become the target's."""
        k = len(self.directions)
        # Medians and interquartile ranges: a chart's far tails (prior samples the flow stretches) would
        # dominate means and standard deviations.
        mean_s, mean_t = source_v.median(0).values, target_v.median(0).values
        scale = _iqr(target_v[:, k:]) / _iqr(source_v[:, k:]).clamp_min(1e-6)
        self.shift.copy_(mean_t[:k] - mean_s[:k])
        self.rest_weight.copy_(torch.diag(scale))
        self.rest_bias.copy_(mean_t[k:] - scale * mean_s[k:])

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        k = len(self.directions)
        return torch.cat([v[:, :k] + self.shift, v[:, k:] @ self.rest_weight.t() + self.rest_bias], dim=1)

    def inverse(self, v: torch.Tensor) -> torch.Tensor:
        """``A⁻¹``: the factor axes shifted back, the rest through the inverse affine map (solved)."""
        k = len(self.directions)
        rest = torch.linalg.solve(self.rest_weight, (v[:, k:] - self.rest_bias).t()).t()
        return torch.cat([v[:, :k] - self.shift, rest], dim=1)


def translate_latents(source: DeCurvEd, alignment: LatentAlignment, target: DeCurvEd, z: torch.Tensor,
                      inverse: bool = False):
    """Source latents ``z [batch, d_s]`` → target latents ``[batch, d_t]``: ``f_t⁻¹(A(f_s(z)))``; with
    ``inverse``, the map is read backwards (``source`` is then the map's target): ``f_t⁻¹(A⁻¹(f_s(z)))``."""
    v = source.encode(z)
    return target.decode(alignment.inverse(v) if inverse else alignment(v))


def check_alignable(source: DeCurvEd, target: DeCurvEd) -> None:
    """Both editors must be DeCurvEd editors over the same named directions, in the same order, on the same d."""
    for role, editor in (("source", source), ("target", target)):
        if not isinstance(editor, DeCurvEd):
            raise ValueError(f"the {role}'s editor is a {editor.kind!r} editor; alignment needs a DeCurvEd editor")
    if source.directions != target.directions or source.latent_dim != target.latent_dim:
        raise ValueError(f"the editors must name the same directions on the same latent dim: source "
                         f"{source.directions} (d = {source.latent_dim}), target {target.directions} "
                         f"(d = {target.latent_dim})")


def _iqr(v: torch.Tensor) -> torch.Tensor:
    return torch.quantile(v, 0.75, dim=0) - torch.quantile(v, 0.25, dim=0)


def _prior_penalty(z: torch.Tensor) -> torch.Tensor:
    """Zero on the prior's typical shell and inside it (‖z‖²/d ≤ 2), growing only logarithmically beyond, so that
    a few latents far out cannot dominate the factor consistency."""
    return torch.log1p(torch.relu(z.pow(2).mean(1) - 2.0)).mean()


def train_alignment(source: tuple, target: tuple, config: AlignmentTrainConfig = AlignmentTrainConfig(),
                    progress: bool = True) -> tuple[LatentAlignment, dict]:
    """``source`` and ``target`` are ``(generator, DeCurvEd editor, regressor)``, all frozen; returns the trained
    alignment (eval mode) and a report (losses per 50 steps, seconds)."""
    (g_s, f_s, r_s), (g_t, f_t, r_t) = source, target
    check_alignable(f_s, f_t)
    for module in (g_s, f_s, r_s, g_t, f_t, r_t):
        module.eval().requires_grad_(False)
    alignment = LatentAlignment(f_s.latent_dim, f_s.directions)
    if config.match_moments:
        with torch.no_grad():
            z = torch.randn(4096, f_s.latent_dim, generator=torch.Generator().manual_seed(config.seed + 1))
            alignment.match_moments(f_s.encode(z), f_t.encode(z))
    opt = torch.optim.Adam(alignment.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    rng = torch.Generator().manual_seed(config.seed)
    losses, window, t0 = [], [], time.time()
    for _ in tqdm(range(config.steps), disable=not progress, desc="alignment", unit="step"):
        z = torch.randn(config.batch_size, f_s.latent_dim, generator=rng)
        with torch.no_grad():
            wanted = r_s(g_s(z))
        z_t = translate_latents(f_s, alignment, f_t, z)
        loss = (r_t(g_t(z_t)) - wanted).abs().mean() + config.prior_weight * _prior_penalty(z_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(alignment.parameters(), config.clip)
        opt.step()
        sched.step()
        window.append(loss.item())
        if len(window) == 50:
            losses.append(sum(window) / len(window))
            window = []
    alignment.eval().requires_grad_(False)
    return alignment, {"losses": losses, "seconds": time.time() - t0, "config": config.to_dict()}
