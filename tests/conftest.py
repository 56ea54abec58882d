"""Shared fixtures. Triton must run through its CPU interpreter here, and the flag must be set before any
kernel module is imported, so it is set at the top of this file (CI sets it too)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from curvedit.bundle import write_bundle
from curvedit.models.editors import DeCurvEd
from curvedit.models.generator import Generator, GeneratorConfig
from curvedit.models.regressor import FactorRegressor


def randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values, so a zero-initialised flow is not the identity in tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def make_tiny_bundle(path, latent_dim: int = 8, directions=("x", "y", "scale", "rotation")):
    """A small, untrained but non-trivial bundle: random generator, random-weight DeCurvEd flow, regressor."""
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig(latent_dim=latent_dim)).eval()
    editor = randomize(DeCurvEd(latent_dim, list(directions), hidden=16, layers=4)).eval()
    return write_bundle(path, name="tiny", version="0.0.1", generator=generator,
                        editors={"decurved": (editor, "supervised", {})}, default_editor="decurved",
                        regressor=FactorRegressor().eval(), seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Path of a tiny bundle shared by the session's tests; treat it as read-only (copy it to modify)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")
