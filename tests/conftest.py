"""Shared fixtures. Triton must run through its CPU interpreter here, and the flag must be set before any
kernel module is imported, so it is set at the top of this file (CI sets it too).

``pytest --serve-workers N`` serves every ``BackgroundServer`` of bundle paths as ``serve --workers N`` would
(N front-end processes before one engine process): the service suites run against both shapes of server. A test
that reaches into the server's own process (its runner, a compute wrapper, loaded models) is marked
``in_process`` and skipped there."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from curvedit.bundle import write_bundle
from curvedit.models.editors import DeCurvEd
from curvedit.models.flows import InvertibleLinear
from curvedit.models.generator import Generator, GeneratorConfig
from curvedit.models.regressor import FactorRegressor


def pytest_addoption(parser):
    parser.addoption("--serve-workers", type=int, default=1, metavar="N",
                     help="serve every BackgroundServer of bundle paths with N front-end processes (default 1)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--serve-workers") > 1:
        skip = pytest.mark.skip(reason="reaches into the server's process; --serve-workers runs it elsewhere")
        for item in items:
            if "in_process" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _serve_workers(request):
    """Session-wide (before any module's server fixture) under ``--serve-workers N``."""
    workers = request.config.getoption("--serve-workers")
    if workers <= 1:
        yield
        return
    import dataclasses

    from curvedit.service import background

    plain = background.BackgroundServer.__init__

    def with_workers(self, config, models=None, compute_wrapper=None):
        if models is None and compute_wrapper is None:
            config = dataclasses.replace(config, workers=workers)
        plain(self, config, models, compute_wrapper)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(background.BackgroundServer, "__init__", with_workers)
        yield


def oblique(dim: int, seed: int = 0) -> torch.Tensor:
    """A random ``[dim, dim]`` matrix, far from orthogonal but well conditioned (singular values 0.7–1.3)."""
    gen = torch.Generator().manual_seed(seed)
    q1, q2 = (torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0] for _ in range(2))
    return q1 @ torch.diag(torch.linspace(0.7, 1.3, dim)) @ q2


def randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values, so a zero-initialised flow is not the identity in tests; a flow's
    mixing layer gets an ``oblique`` matrix (random entries of scale ``std`` would be nearly singular)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        for sub in module.modules():
            if isinstance(sub, InvertibleLinear):
                sub.weight.copy_(oblique(sub.weight.shape[0], seed))
    return module


def tiny_modules(latent_dim: int = 8, directions=("x", "y", "scale", "rotation")):
    """``(generator, editor, regressor)``: random generator, random-weight DeCurvEd flow (with a mixing layer,
    like a trained one), untrained regressor; the same modules for the same arguments."""
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig(latent_dim=latent_dim)).eval()
    editor = randomize(DeCurvEd(latent_dim, list(directions), hidden=16, layers=4, mixing=True)).eval()
    return generator, editor, FactorRegressor().eval()


def make_tiny_bundle(path, latent_dim: int = 8, directions=("x", "y", "scale", "rotation")):
    """A small, untrained but non-trivial bundle of ``tiny_modules``."""
    generator, editor, regressor = tiny_modules(latent_dim, directions)
    return write_bundle(path, name="tiny", version="0.0.1", generator=generator,
                        editors={"decurved": (editor, "supervised", {})}, default_editor="decurved",
                        regressor=regressor, seed=0)


def make_tiny_vae_bundle(path, latent_dim: int = 8, directions=("x", "y", "scale", "rotation")):
    """A small, untrained VAE bundle (a generator family that can encode), like ``make_tiny_bundle``."""
    from curvedit.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=latent_dim, base_channels=8, hidden=32)).eval()
    editor = randomize(DeCurvEd(latent_dim, list(directions), hidden=16, layers=4, mixing=True)).eval()
    return write_bundle(path, name="tinyvae", version="0.0.1", generator=vae,
                        editors={"decurved": (editor, "supervised", {})}, default_editor="decurved",
                        regressor=FactorRegressor().eval(), seed=0)


@pytest.fixture(scope="session")
def tiny_vae_bundle(tmp_path_factory):
    """Path of a tiny VAE bundle shared by the session's tests; treat it as read-only."""
    return make_tiny_vae_bundle(tmp_path_factory.mktemp("bundles") / "tinyvae")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Path of a tiny bundle shared by the session's tests; treat it as read-only (copy it to modify)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")
