"""Linear editors: ``z' = z + A t`` with one column of ``A [d, K]`` per direction.

Three ways to get ``A``: learned (Voynov–Babenko), PCA of generator features regressed back to ``z``
(GANSpace), or the closed-form factorisation of the generator's first linear layer (SeFa). Every linear editor
commutes exactly and ``−t`` undoes ``t``; none can follow a curved factor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from curvedit.models.editors import Editor, register_editor


def gram_schmidt(matrix: torch.Tensor) -> torch.Tensor:
    """``[d, K]`` → orthonormal columns ``[d, K]`` spanning the same nested subspaces.

    Written with plain matmuls and norms (not ``torch.linalg.qr``) so that it stays differentiable and can be
    traced into an ONNX graph by the exporters; K is small, so the loop is cheap.
    """
    columns: list[torch.Tensor] = []
    for k in range(matrix.shape[1]):
        v = matrix[:, k]
        for q in columns:
            v = v - (q @ v) * q
        columns.append(v / v.norm().clamp_min(1e-12))
    return torch.stack(columns, dim=1)


class _Linear(Editor):
    """Shared edit: ``z [batch, d] + amounts [batch, K] @ basis().T``."""

    approach = "oblique"

    def basis(self) -> torch.Tensor:
        """The direction matrix ``[d, K]``."""
        return self.weight

    def edit(self, z: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
        return z + amounts @ self.basis().T


@register_editor
class LinearEditor(_Linear):
    """Voynov–Babenko's learned deformator ``A [d, K]``; ``orthonormal=True`` orthonormalises its columns
    (Gram–Schmidt of a free matrix), so amounts are distances in Z.

    Reference: Voynov & Babenko, "Unsupervised Discovery of Interpretable Directions in the GAN Latent
    Space", ICML 2020.
    """

    kind = "linear"

    def __init__(self, latent_dim: int, directions: list[str], orthonormal: bool = False, seed: int = 0):
        super().__init__(latent_dim, directions)
        self.orthonormal = bool(orthonormal)
        self.seed = seed
        rng = torch.Generator().manual_seed(seed)
        start = torch.linalg.qr(torch.randn(latent_dim, self.num_directions, generator=rng))[0]
        self.weight = nn.Parameter(start)

    def config(self) -> dict:
        return {**super().config(), "orthonormal": self.orthonormal, "seed": self.seed}

    def basis(self) -> torch.Tensor:
        return gram_schmidt(self.weight) if self.orthonormal else self.weight


class _FittedLinear(_Linear):
    """A linear editor whose matrix is computed, not trained: a buffer, saved with the bundle."""

    needs_training = False

    def __init__(self, latent_dim: int, directions: list[str]):
        super().__init__(latent_dim, directions)
        self.register_buffer("weight", torch.zeros(latent_dim, self.num_directions))

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, directions: list[str]) -> _FittedLinear:
        """An editor with the columns ``matrix [d, K]``."""
        editor = cls(matrix.shape[0], directions)
        editor.weight.copy_(matrix.detach())
        return editor.eval()


def _fix_signs(matrix: torch.Tensor) -> torch.Tensor:
    """Eigenvectors have no sign; make each column's largest entry positive so fits are reproducible."""
    rows = matrix.abs().argmax(dim=0)
    signs = torch.sign(matrix[rows, torch.arange(matrix.shape[1])])
    return matrix * torch.where(signs == 0, 1.0, signs)


@register_editor
class GANSpaceEditor(_FittedLinear):
    """Principal components of an early generator layer, regressed back to Z.

    PCA of the sampled latents themselves is degenerate here: z ~ N(0, I) is isotropic, so every direction
    is a principal axis and the "components" are whatever the sampling noise makes them. GANSpace's own
    recipe for generators whose input is z (BigGAN) avoids this: PCA in the feature space of an early layer
    ``y = F(z)`` (the family's ``edit_features``, e.g. the DCGAN's first fc → BN → ReLU activations), then a
    least-squares regression from the PCA coordinates ``x = Vᵀ(y − μ)`` back to ``z ≈ U x``; column ``u_k`` of
    ``U``, normalised to unit length, is direction k. Amounts are therefore distances in Z (standard deviations
    of the latent prior).

    Reference: Härkönen et al., "GANSpace: Discovering Interpretable GAN Controls", NeurIPS 2020.
    """

    kind = "ganspace"

    @classmethod
    @torch.no_grad()
    def fit(cls, generator, directions: list[str], samples: int = 2048, seed: int = 0,
            features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> GANSpaceEditor:
        """Fit K = ``len(directions)`` components from ``samples`` latents drawn with ``seed``."""
        z = torch.randn(samples, generator.latent_dim, generator=torch.Generator().manual_seed(seed))
        feats = (features or generator.edit_features)(z)
        return cls.from_matrix(pca_directions(z, feats, len(directions)), directions)


def pca_directions(z: torch.Tensor, feats: torch.Tensor, count: int) -> torch.Tensor:
    """GANSpace's fit: ``z [n, d]``, ``feats [n, F]`` → unit directions ``[d, count]`` in Z, in the order of
    the feature-space components' variance."""
    if count > min(feats.shape[1], z.shape[1]):
        raise ValueError(f"asked for {count} components from {feats.shape[1]} features, latent dim {z.shape[1]}")
    centred = feats - feats.mean(0)
    # Randomised SVD of the top components only: the full SVD of [n, F] costs O(n F²) for F in the thousands.
    with torch.random.fork_rng():  # svd_lowrank draws from the global RNG: seed it, leave the caller's alone
        torch.manual_seed(0)
        _, _, v = torch.svd_lowrank(centred, q=min(count + 10, *centred.shape), niter=6)
    coords = centred @ v[:, :count]  # [n, count]
    regression = torch.linalg.lstsq(coords, z).solution  # [count, d]: z ≈ coords @ regression
    directions = regression.T / regression.T.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return _fix_signs(directions).float()


@register_editor
class SeFaEditor(_FittedLinear):
    """Closed-form factorisation: the top-K eigenvectors of ``AᵀA``, ``A [out, d]`` the weight of the
    generator's first linear layer on z (the family's ``linear_map()``): the unit directions in Z that layer
    amplifies most. No training, no sampling.

    Reference: Shen & Zhou, "Closed-Form Factorization of Latent Semantics in GANs", CVPR 2021.
    """

    kind = "sefa"

    @classmethod
    @torch.no_grad()
    def fit(cls, generator, directions: list[str]) -> SeFaEditor:
        weight = generator.linear_map()
        if weight is None:
            raise ValueError(f"SeFa needs the weight of a linear first layer acting on z, and the "
                             f"{generator.family!r} generator exposes none (linear_map() is None); use ganspace "
                             "or a trained editor instead")
        return cls.from_matrix(sefa_directions(weight, len(directions)), directions)


def sefa_directions(weight: torch.Tensor, count: int) -> torch.Tensor:
    """``weight [out, d]`` → the eigenvectors of ``weightᵀ weight`` with the ``count`` largest eigenvalues,
    ``[d, count]``, largest first."""
    if weight.ndim != 2 or count > weight.shape[1]:
        raise ValueError(f"SeFa needs a weight [out, d] with d >= {count}, got {list(weight.shape)}")
    a = weight.detach().double()
    values, vectors = torch.linalg.eigh(a.T @ a)  # ascending
    top = vectors[:, values.argsort(descending=True)[:count]]
    return _fix_signs(top).float()
