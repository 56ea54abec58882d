"""Synthetic bundles with random weights, for benchmarks and tests at sizes the shipped model does not have."""

from __future__ import annotations

from pathlib import Path

import torch

from curvedit.bundle import write_bundle
from curvedit.models.editors import DeCurvEd
from curvedit.models.generator import Generator, GeneratorConfig


def make_synthetic_bundle(path: str | Path, latent_dim: int = 512, hidden: int = 512, layers: int = 8,
                          directions: int = 8, seed: int = 0, weight_std: float = 0.02) -> Path:
    """Write a bundle with a random generator and a random-weight DeCurvEd flow (``d``, ``h``, ``L`` as given).

    Every flow weight (the zero-initialised last layers included) gets ``N(0, weight_std²)``, so the flow is
    a real nonlinear bijection, not the identity. The editor's directions are ``d0..d{K-1}``.
    """
    torch.manual_seed(seed)
    generator = Generator(GeneratorConfig(latent_dim=latent_dim)).eval()
    editor = DeCurvEd(latent_dim, [f"d{k}" for k in range(directions)], hidden=hidden, layers=layers,
                      perm_seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in editor.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * weight_std)
    return write_bundle(path, name=f"synthetic-d{latent_dim}-h{hidden}-l{layers}", version="0.0.0",
                        generator=generator, editors={"decurved": (editor, "synthetic", {})},
                        default_editor="decurved", seed=seed,
                        training={"synthetic": True, "weight_std": weight_std})
