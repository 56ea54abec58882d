"""The shipped models: trained weights that load by name, invert, commute, move the factor they name, and — for
the VAEs — encode real images well enough to edit them."""


import numpy as np
import pytest
import torch
from numerics import flow_passes, in_float64, pass_rounding

import curvedit
from curvedit.evaluation.real_images import measure
from curvedit.models.datasets import make_dataset
from curvedit.models.measure import factor_response
from curvedit.models.vae import reconstruction_psnr

SHIPPED = curvedit.list_models()
SUPERVISED = [name for name in SHIPPED if curvedit.load(name, engine="torch").bundle.regressor is not None]


@pytest.fixture(scope="module", params=SHIPPED)
def model(request):
    return curvedit.load(request.param, engine="torch")


def test_every_shipped_model_has_a_name_and_the_default_comes_first():
    assert SHIPPED[0] == "shapes32"
    assert {"shapes32", "shapes-vae", "digits-vae", "shapes-betavae", "shapes-infogan"} <= set(SHIPPED)
    assert curvedit.load(engine="torch").name == "shapes32"


def test_shipped_models_are_small_and_named(model):
    total = sum(f.stat().st_size for f in model.bundle.path.iterdir() if f.suffix == ".safetensors")
    assert total < 8 * 2**20
    assert model.name == model.bundle.path.name
    mode = model.bundle.manifest["editors"][model.default_editor]["mode"]
    if model.bundle.regressor is not None:
        assert mode == "supervised" and model.directions == list(model.bundle.regressor.factor_names)
    else:
        assert mode == "unsupervised" and model.directions == [f"d{k}" for k in range(model.latent_dim)]


def _edit_in_float64(editor):
    def edit(z: np.ndarray, amounts: dict) -> np.ndarray:
        t = torch.zeros(len(z), editor.num_directions, dtype=torch.float64)
        for name, amount in amounts.items():
            t[:, editor.directions.index(name)] = amount
        with torch.no_grad():
            return editor.edit(torch.from_numpy(z).double(), t).numpy()
    return edit


@pytest.mark.parametrize("precision", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_trained_edits_commute_and_invert(model, precision):
    """Relative commutation ‖A(B(z)) − B(A(z))‖ / ‖A(B(z)) − z‖ and round trip ‖E₋ₜ(Eₜ(z)) − z‖ / ‖z‖ are
    rounding only: float32 through the model's engine, float64 through a float64 copy of the editor. Measured
    5.5e-7–9.5e-7 (float32) and 1.1e-15–1.9e-15 (float64) on the eight models (commutation)."""
    editor = model.bundle.editors[model.default_editor]
    edit = model.edit if precision == torch.float32 else _edit_in_float64(in_float64(editor))
    # Each path is two edits of flow_passes layer passes, each rounding by ≤ √w·ε (tests/numerics.py).
    bound = 2 * flow_passes(editor) * pass_rounding(editor, precision)
    first, last = model.directions[0], model.directions[-1]
    z = model.sample(256, seed=100).astype(np.float32 if precision == torch.float32 else np.float64)
    a = edit(edit(z, {first: 1.0}), {last: -0.7})
    b = edit(edit(z, {last: -0.7}), {first: 1.0})
    assert np.linalg.norm(a - b) / np.linalg.norm(a - z) < bound
    t = {model.directions[1]: 1.2, model.directions[2]: -0.8}
    back = edit(edit(z, t), {k: -v for k, v in t.items()})
    assert np.linalg.norm(back - z) / np.linalg.norm(z) < bound


@pytest.mark.parametrize("name", SUPERVISED)
@torch.no_grad()
def test_each_direction_moves_its_own_factor_most(name):
    """Read the rendered edits back with the bundle's factor regressor: direction k's largest response is
    factor k, and a unit amount moves it by a sizeable fraction of a standard deviation."""
    bundle = curvedit.load(name, engine="torch").bundle
    latents = torch.from_numpy(curvedit.load(name, engine="torch").sample(256, seed=7))
    response = factor_response(bundle.generator, bundle.editors["decurved"], bundle.regressor, latents, 1.0)
    assert response.argmax(dim=1).tolist() == list(range(len(bundle.regressor.factor_names)))
    assert torch.all(response.diagonal() > 0.3)


def test_every_editor_ships_a_verified_graph(model):
    """The service's ``editor`` field may pick any editor of a bundle: each one has its own verified graph."""
    graphs = {entry["editor"] for entry in model.bundle.manifest["onnx"].values() if entry["graph"] == "edit"}
    assert graphs == set(model.bundle.editors)


@pytest.mark.parametrize("name", [n for n in SHIPPED if "axes" in curvedit.load(n, engine="torch").bundle.editors])
def test_axes_editors_move_the_axes_their_matching_chose(name):
    """``axes``: each factor's axis is the one the recorded matching chose, among the family's own code axes,
    and an edit adds its amount to that coordinate alone."""
    bundle = curvedit.load(name, engine="torch").bundle
    editor, matching = bundle.editors["axes"], bundle.manifest["editors"]["axes"]["training"]["matching"]
    assert editor.axes == [matching["axis_of"][d] for d in editor.directions]
    assert set(editor.axes) <= set(bundle.generator.code_axes())
    z = torch.randn(8, bundle.generator.latent_dim)
    amounts = torch.zeros(8, len(editor.directions))
    amounts[:, 0] = 1.5
    expected = z.clone()
    expected[:, editor.axes[0]] += 1.5
    assert torch.equal(editor.edit(z, amounts), expected)


@pytest.mark.parametrize("name", [n for n in SHIPPED if curvedit.load(n, engine="torch").can_encode])
def test_encoders_ship_a_verified_graph_that_matches_torch(name):
    """Either a verified ``encoder.onnx``, or the manifest's reason for shipping none (the PixelCNN stores its
    frozen encoder once, in its weights); the ONNX Runtime engine's latents match torch's either way."""
    model, ort = curvedit.load(name, engine="torch"), curvedit.load(name, engine="onnxruntime")
    not_shipped = model.bundle.manifest.get("onnx_not_shipped", {})
    assert ("encoder.onnx" in model.bundle.manifest["onnx"]) != ("encoder.onnx" in not_shipped)
    images = model.generate(model.sample(7, seed=1))
    np.testing.assert_allclose(ort.encode(images), model.encode(images), atol=1e-4)


def test_shapes_vae_reconstructs_held_out_renders_above_24_db():
    model = curvedit.load("shapes-vae", engine="torch")
    held_out = make_dataset("shapes", seed=0).held_out(1000)
    assert reconstruction_psnr(model.bundle.generator, held_out).mean() >= 24.0


def test_shapes_vae_edits_shapes_drawn_by_another_program():
    """An x = +1 edit of a real (Pillow-drawn) image moves the pixel centroid right by 0.6–1.4 standard
    deviations of the x factor, y and size drift less than 0.35 of that, and encode → decode keeps ≥ 20 dB."""
    result = measure(curvedit.load("shapes-vae", engine="torch"), "x", 1.0, n=96)
    assert 0.6 <= result["x_shift_std"] <= 1.4, result
    assert result["y_drift_std"] < 0.35 * result["x_shift_std"], result
    assert result["size_drift_std"] < 0.35 * result["x_shift_std"], result
    assert result["psnr_db_mean"] >= 20.0, result


@torch.no_grad()
def test_the_pixelcnn_encodes_with_the_shapes_vae_encoder_stored_once():
    """Its encoder is the shapes-vae's, read from that model's weight file (one copy in the shared store): the
    same latents, so the shapes-vae's editors apply to it unchanged."""
    from torch.nn import functional as F

    pixelcnn, vae = (curvedit.load(n, engine="torch").bundle for n in ("shapes-pixelcnn", "shapes-vae"))
    borrow = pixelcnn.manifest["generator"]["borrow"]
    assert borrow["prefix"] == "encoder." and borrow["from"] == "shapes-vae"
    assert pixelcnn.manifest["files"][borrow["file"]] == vae.manifest["files"]["generator.safetensors"]
    assert "encoder.onnx" in pixelcnn.manifest["onnx_not_shipped"]
    small = F.avg_pool2d(make_dataset("shapes", seed=0).held_out(1000), 2)
    upsampled = F.interpolate(small, scale_factor=2, mode="nearest")
    assert torch.equal(pixelcnn.generator.encode(small), vae.generator.encode(upsampled))


@pytest.mark.parametrize("name", ["shapes-vae", "shapes-betavae", "digits-vae"])
def test_the_32px_vaes_store_their_large_weights_in_half_precision_and_say_so(name):
    from safetensors.torch import load_file

    from curvedit.models.bundle_files import locate
    from curvedit.recipes import RECIPES, VAE_FLOAT16

    bundle = curvedit.load(name, engine="torch").bundle
    assert bundle.manifest["generator"]["float16"] == list(VAE_FLOAT16) == list(RECIPES[name].generator_float16)
    stored = load_file(locate(bundle.path, bundle.manifest, "generator.safetensors"))
    assert {k for k, v in stored.items() if v.dtype == torch.float16} == set(VAE_FLOAT16)


def test_the_pixelcnn_samples_the_shapes_background_grey_and_onnxruntime_draws_the_same_images():
    model, ort = curvedit.load("shapes-pixelcnn", engine="torch"), curvedit.load("shapes-pixelcnn",
                                                                                engine="onnxruntime")
    z = model.sample(8, seed=3)
    images = model.generate(z, seed=11)
    assert (images[:, 0, 0] == 26).all()  # the corners: the renders' background, a palette colour
    assert (ort.generate(z, seed=11) == images).all()
    assert ort.runtime.origins == {"pixelcnn_rows": "bundle", "pixelcnn_pixel": "bundle"}
    assert not (model.generate(z, seed=12) == images).all()
