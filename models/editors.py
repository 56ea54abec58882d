"""Editors: a learned (or fitted) way to move a latent along K named directions.

Every editor maps ``(z [batch, d], amounts [batch, K]) → z' [batch, d]``. Editors register their ``kind`` so a
bundle can rebuild them from ``(kind, config)``; baselines live in their own modules and register the same way.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from curvedit.models.flows import CouplingFlow, FlowConfig

EDITOR_KINDS: dict[str, type[Editor]] = {}
# Constructor options a newly trained editor gets unless the caller says otherwise. A DeCurvEd editor trains with
# its mixing layer (a bare ``DeCurvEd(...)`` has none, as do bundles written before the layer existed) and 16
# coupling layers: on the known chart at curvature 1.2, 16 layers lifted supervised purity from 0.81 to 0.88 (0.93
# with a cosine learning-rate decay); see docs/EVALUATION.md, "Raising the bar".
TRAINING_DEFAULTS: dict[str, dict] = {"decurved": {"mixing": True, "layers": 16}}


def register_editor(cls: type[Editor]) -> type[Editor]:
    EDITOR_KINDS[cls.kind] = cls
    return cls


def build_editor(kind: str, config: dict) -> Editor:
    """Rebuild an editor (untrained weights) from its ``kind`` and ``config()``."""
    if kind not in EDITOR_KINDS:
        raise ValueError(f"unknown editor kind {kind!r}; known kinds: {sorted(EDITOR_KINDS)}")
    return EDITOR_KINDS[kind](**config)


class Editor(nn.Module):
    """Base class. Subclasses set ``kind``, ``needs_training`` and implement ``edit``."""

    kind: ClassVar[str] = ""
    needs_training: ClassVar[bool] = True
    commutative: ClassVar[bool] = True
    # The family of approaches in the method's comparison table: "cartesian" (a generator's own axes),
    # "oblique" (linear arithmetic), "local" (vector fields) or "curvilinear".
    approach: ClassVar[str] = ""

    def __init__(self, latent_dim: int, directions: list[str]):
        super().__init__()
        if len(directions) == 0 or len(directions) > latent_dim:
            raise ValueError(f"need 1..{latent_dim} directions (K <= latent dim), got {len(directions)}")
        if len(set(directions)) != len(directions):
            raise ValueError(f"direction names must be unique, got {directions}")
        self.latent_dim = latent_dim
        self.directions = list(directions)

    @property
    def num_directions(self) -> int:
        return len(self.directions)

    def config(self) -> dict:
        """Constructor arguments, JSON-serialisable: ``build_editor(kind, config())`` rebuilds the module."""
        return {"latent_dim": self.latent_dim, "directions": self.directions}

    def edit(self, z: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
        """``z [batch, d]``, ``amounts [batch, K]`` → ``z' [batch, d]``."""
        raise NotImplementedError

    def training_edit(self, z: torch.Tensor, amounts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The edit plus a scalar regulariser added to the training loss (zero unless overridden)."""
        return self.edit(z, amounts), z.new_zeros(())

    @property
    def wants_warm_start(self) -> bool:
        return False

    def warm_start(self, z: torch.Tensor, factors: torch.Tensor) -> None:
        """If ``wants_warm_start``, supervised training calls this once before its first step with latents
        ``z [n, d]`` and the factor readings of their images for this editor's directions, ``factors [n, K]``."""


@register_editor
class DeCurvEd(Editor):
    """Curvilinear editing: ``z' = f⁻¹(f(z) + Σ_k t_k e_k)`` with ``f`` an affine coupling flow.

    Direction k is axis k of ``v = f(z)``. Edits commute and ``−t`` undoes ``t`` exactly (up to float error),
    because they are additions in ``v``.

    Reference: Aoshima & Matsubara, "Deep Curvilinear Editing: Commutative and Nonlinear Image Manipulation
    for Pretrained Deep Generative Model", CVPR 2023.
    """

    kind = "decurved"
    approach = "curvilinear"

    def __init__(self, latent_dim: int, directions: list[str], hidden: int = 64, layers: int = 8,
                 clamp: float = 2.0, perm_seed: int = 0, mixing: bool = False):
        super().__init__(latent_dim, directions)
        self.flow = CouplingFlow(FlowConfig(latent_dim, hidden, layers, clamp, perm_seed, mixing))

    def config(self) -> dict:
        flow = self.flow.config
        return {**super().config(), "hidden": flow.hidden, "layers": flow.layers, "clamp": flow.clamp,
                "perm_seed": flow.perm_seed, "mixing": flow.mixing}

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """``z [batch, d]`` → Cartesian edit coordinates ``v = f(z) [batch, d]``."""
        return self.flow(z, logdet=False)[0]

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        """``v [batch, d]`` → ``z = f⁻¹(v) [batch, d]``."""
        return self.flow.inverse(v, logdet=False)[0]

    def shift(self, amounts: torch.Tensor) -> torch.Tensor:
        """``amounts [batch, K]`` → the displacement in ``v``, ``[batch, d]`` (zero past axis K)."""
        return nn.functional.pad(amounts, (0, self.latent_dim - self.num_directions))

    def edit(self, z: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(z) + self.shift(amounts))

    def training_edit(self, z: torch.Tensor, amounts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Regulariser: mean squared log|det| of the inverse pass, keeping f near volume-preserving."""
        z_edited, logabsdet = self.flow.inverse(self.encode(z) + self.shift(amounts))
        return z_edited, logabsdet.pow(2).mean()

    @property
    def wants_warm_start(self) -> bool:
        return self.flow.mixing is not None

    @torch.no_grad()
    def warm_start(self, z: torch.Tensor, factors: torch.Tensor) -> None:
        """Start the mixing layer at the best linear chart: rows 1..K of ``W`` regress the factor readings on
        ``z`` (least squares, with an intercept), rows K+1..d span the rest of latent space (orthonormal), so
        before any coupling learns a thing, axis k of ``v`` already moves factor k as well as a linear editor
        can. The couplings then only have to learn the curvature.
        """
        if self.flow.mixing is None:
            raise ValueError("warm_start needs a DeCurvEd editor with a mixing layer (mixing=True)")
        n, d = z.shape
        design = torch.cat([z, z.new_ones(n, 1)], dim=1).double()
        rows = torch.linalg.lstsq(design, factors.double()).solution[:d].t()  # [K, d]
        complement = torch.linalg.svd(rows, full_matrices=True).Vh[rows.shape[0] :]  # [d - K, d]
        chart = torch.cat([rows, complement]).float()
        if torch.linalg.matrix_rank(chart) < d:
            raise ValueError("warm start: the factor readings are linearly dependent on z; cannot build an "
                             "invertible linear chart (train with mixing=False)")
        # Untrained couplings are pure permutations: v[:, i] = (W z)[:, order[i]]. Row k of the chart must land
        # on axis k of v, so it goes to row order[k] of W.
        order = torch.arange(d, dtype=torch.float32)[None]
        for layer in self.flow.layers:
            order = layer(order)[0]
        order = order[0]
        if not torch.equal(order.sort().values, torch.arange(d, dtype=order.dtype)):
            raise ValueError("warm_start is for an untrained editor: its couplings are no longer permutations")
        weight = torch.empty_like(chart)
        weight[order.long()] = chart
        self.flow.mixing.weight.copy_(weight)
