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


@register_editor
class DeCurvEd(Editor):
    """Curvilinear editing: ``z' = f⁻¹(f(z) + Σ_k t_k e_k)`` with ``f`` an affine coupling flow.

    Direction k is axis k of ``v = f(z)``. Edits commute and ``−t`` undoes ``t`` exactly (up to float error),
    because they are additions in ``v``.

    Reference: Aoshima & Matsubara, "Deep Curvilinear Editing: Commutative and Nonlinear Image Manipulation
    for Pretrained Deep Generative Model", CVPR 2023.
    """

    kind = "decurved"

    def __init__(self, latent_dim: int, directions: list[str], hidden: int = 64, layers: int = 8,
                 clamp: float = 2.0, perm_seed: int = 0):
        super().__init__(latent_dim, directions)
        self.flow = CouplingFlow(FlowConfig(latent_dim, hidden, layers, clamp, perm_seed))

    def config(self) -> dict:
        flow = self.flow.config
        return {**super().config(), "hidden": flow.hidden, "layers": flow.layers, "clamp": flow.clamp,
                "perm_seed": flow.perm_seed}

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """``z [batch, d]`` → Cartesian edit coordinates ``v = f(z) [batch, d]``."""
        return self.flow(z)[0]

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        """``v [batch, d]`` → ``z = f⁻¹(v) [batch, d]``."""
        return self.flow.inverse(v)[0]

    def shift(self, amounts: torch.Tensor) -> torch.Tensor:
        """``amounts [batch, K]`` → the displacement in ``v``, ``[batch, d]`` (zero past axis K)."""
        return nn.functional.pad(amounts, (0, self.latent_dim - self.num_directions))

    def edit(self, z: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(z) + self.shift(amounts))

    def training_edit(self, z: torch.Tensor, amounts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Regulariser: mean squared log|det| of the inverse pass, keeping f near volume-preserving."""
        z_edited, logabsdet = self.flow.inverse(self.encode(z) + self.shift(amounts))
        return z_edited, logabsdet.pow(2).mean()
