"""Metrics of an editor, each a plain function of an edit callable and tensors, so each has a constructed test.

An *edit* is any callable ``(z [batch, d], amounts [batch, K]) → z' [batch, d]``; a *space* maps latents to
the representation being compared (``None``: the latents themselves; the generator: pixels; the factor
reader: factors). Relative errors are ratios of batch means of norms (not means of per-sample ratios, which
a few tiny denominators would dominate).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

Edit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Space = Callable[[torch.Tensor], torch.Tensor] | None


def single(z: torch.Tensor, count: int, k: int, amount: float) -> torch.Tensor:
    """Amounts ``[batch, count]`` moving only direction ``k`` by ``amount``."""
    amounts = z.new_zeros(z.shape[0], count)
    amounts[:, k] = amount
    return amounts


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    return (numerator.mean() / denominator.mean().clamp_min(1e-30)).item()


def _view(space: Space, z: torch.Tensor) -> torch.Tensor:
    return z if space is None else space(z)


@torch.no_grad()
def commutation_error(edit: Edit, z: torch.Tensor, count: int, a: int, b: int, t_a: float, t_b: float,
                      space: Space = None) -> float:
    """``‖A(B(z)) − B(A(z))‖ / ‖A(B(z)) − z‖`` in ``space``, A = direction a by ``t_a``, B = b by ``t_b``."""
    def move_a(x):
        return edit(x, single(x, count, a, t_a))

    def move_b(x):
        return edit(x, single(x, count, b, t_b))

    ab, ba = move_a(move_b(z)), move_b(move_a(z))
    ab_view, ba_view, z_view = _view(space, ab), _view(space, ba), _view(space, z)
    return _ratio(_norm(ab_view - ba_view), _norm(ab_view - z_view))


@torch.no_grad()
def loop_error(edit: Edit, z: torch.Tensor, count: int, a: int, b: int, t_a: float, t_b: float) -> float:
    """Commutator cycle ``B₋ A₋ B₊ A₊``: ``‖cycle(z) − z‖ / ‖B₊(A₊(z)) − z‖`` (0 for commuting, invertible
    edits)."""
    forward = edit(edit(z, single(z, count, a, t_a)), single(z, count, b, t_b))
    back = edit(edit(forward, single(z, count, a, -t_a)), single(z, count, b, -t_b))
    return _ratio(_norm(back - z), _norm(forward - z))


@torch.no_grad()
def round_trip_error(edit: Edit, z: torch.Tensor, count: int, k: int, t: float) -> float:
    """``‖E₋ₜ(Eₜ(z)) − z‖ / ‖Eₜ(z) − z‖`` for direction ``k``."""
    there = edit(z, single(z, count, k, t))
    back = edit(there, single(z, count, k, -t))
    return _ratio(_norm(back - z), _norm(there - z))


@torch.no_grad()
def path_curvature(edit: Edit, z: torch.Tensor, count: int, k: int, t: float) -> float:
    """How far the edit path bends in Z: ``‖E_{t/2}(z) − (z + Eₜ(z))/2‖ / ‖Eₜ(z) − z‖`` (0 for a straight path;
    for a circular arc of angle θ it is ``(1 − cos(θ/2)) / (2 sin(θ/2))``)."""
    end = edit(z, single(z, count, k, t))
    middle = edit(z, single(z, count, k, t / 2))
    return _ratio(_norm(middle - (z + end) / 2), _norm(end - z))


def pure_count(per_direction: torch.Tensor, matched: list[int], threshold: float = 0.8) -> int:
    """How many distinct factors have a direction with purity above ``threshold``."""
    return len({j for p, j in zip(per_direction.tolist(), matched, strict=True) if p > threshold})


def dci(response: torch.Tensor) -> tuple[float, float]:
    """DCI-style ``(disentanglement, completeness)`` from a ``[K, F]`` importance matrix (here the factor
    response M, standing in for the regressor importances of Eastwood & Williams, ICLR 2018).

    Disentanglement: ``Σ_k ρ_k (1 − H_F(P_k·))`` with ``P_k· = M[k]/Σ_j M[k, j]`` and ``ρ_k`` direction k's share
    of the total; completeness: ``Σ_j ρ_j (1 − H_K(P_·j))`` over factors. Entropies use bases F and K, so each
    score is in [0, 1] and 1 means one-to-one.
    """
    m = response.double().clamp_min(0)
    total = m.sum().clamp_min(1e-30)

    def score(rows: torch.Tensor, base: int) -> float:
        if base < 2:
            return 1.0
        p = rows / rows.sum(1, keepdim=True).clamp_min(1e-30)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(1) / math.log(base)
        return ((rows.sum(1) / total) * (1 - entropy)).sum().item()

    return score(m, m.shape[1]), score(m.T, m.shape[0])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a [n, D]`` and ``b [m, D]``:
    ``‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)``. The trace of the square root is computed as
    ``Σ √eig(Σa^½ Σb Σa^½)`` (a symmetric PSD matrix with the same eigenvalues), with no SciPy."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def atypicality(z: torch.Tensor) -> float:
    """``mean |‖z‖² − d| / d``: how far latents sit from the prior's typical shell (≈ ``sqrt(2/d)·0.8`` for
    z ~ N(0, I))."""
    d = z.shape[1]
    return ((z.pow(2).sum(1) - d).abs() / d).mean().item()


def log_density_change(z: torch.Tensor, z_edited: torch.Tensor) -> float:
    """Mean change of the standard-normal log-density, ``mean(½‖z‖² − ½‖z'‖²)`` (negative: less typical)."""
    return (0.5 * (z.pow(2).sum(1) - z_edited.pow(2).sum(1))).mean().item()


def psnr(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``[n]`` of images in [-1, 1], on the [0, 1] scale (peak 1)."""
    mse = ((reconstructed - original) / 2).pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))
