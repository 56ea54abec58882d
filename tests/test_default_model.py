"""The shipped default bundle: trained weights that load, invert, commute, and move the factor they name."""

import numpy as np
import pytest
import torch

import curvedit
from curvedit.models.measure import factor_response
from curvedit.models.renderer import FACTOR_NAMES


@pytest.fixture(scope="module")
def model():
    return curvedit.load(engine="torch")


def test_shipped_bundle_is_small_and_named_like_the_factors(model):
    total = sum(f.stat().st_size for f in model.bundle.path.iterdir() if f.suffix == ".safetensors")
    assert total < 8 * 2**20
    assert model.directions == list(FACTOR_NAMES)
    assert model.bundle.manifest["editors"]["decurved"]["mode"] == "supervised"


def test_trained_edits_commute_and_invert(model):
    z = model.sample(256, seed=100)
    a = model.edit(model.edit(z, {"x": 1.0}), {"hue": -0.7})
    b = model.edit(model.edit(z, {"hue": -0.7}), {"x": 1.0})
    assert np.linalg.norm(a - b) / np.linalg.norm(a - z) < 1e-5
    back = model.edit(model.edit(z, {"scale": 1.2, "rotation": -0.8}), {"scale": -1.2, "rotation": 0.8})
    np.testing.assert_allclose(back, z, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_each_direction_moves_its_own_factor_most(model):
    """Read the rendered edits back with the bundle's factor regressor: direction k's largest response is
    factor k, and a unit amount moves it by a sizeable fraction of a standard deviation."""
    bundle = model.bundle
    latents = torch.from_numpy(model.sample(256, seed=7))
    response = factor_response(bundle.generator, bundle.editors["decurved"], bundle.regressor, latents, 1.0)
    assert response.argmax(dim=1).tolist() == list(range(len(FACTOR_NAMES)))
    assert torch.all(response.diagonal() > 0.3)
