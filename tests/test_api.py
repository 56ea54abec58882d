"""The public API: shapes, dtypes, determinism, and a clear ValueError for every bad input."""

import numpy as np
import pytest
import torch
from numerics import EPS, assert_within, edit_bound

import curvedit
from curvedit.engines.onnx_engine import available_cores
from curvedit.kernels.configs import triton_available


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return curvedit.load(tiny_bundle, engine="torch")


def test_sample_is_float32_and_seeded(model):
    z = model.sample(5, seed=3)
    assert z.dtype == np.float32 and z.shape == (5, 8)
    np.testing.assert_array_equal(z, model.sample(5, seed=3))
    np.testing.assert_array_equal(z[2:], model.sample_seeds([5, 6, 7]))
    assert not np.array_equal(model.sample(5, seed=4), z)


def test_edit_accepts_a_mapping_or_an_array(model):
    z = model.sample(4, seed=0)
    by_name = model.edit(z, {"scale": 1.5, "x": -1.0})
    amounts = np.zeros((4, 4), np.float32)
    amounts[:, 0], amounts[:, 2] = -1.0, 1.5
    np.testing.assert_array_equal(by_name, model.edit(z, amounts))
    assert by_name.dtype == np.float32 and by_name.shape == (4, 8)


def test_per_item_amounts_edit_each_row_independently(model):
    z = model.sample(3, seed=0)
    amounts = np.array([[1, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0, 0]], np.float32)
    rows = np.concatenate([model.edit(z[i : i + 1], amounts[i : i + 1]) for i in range(3)])
    # The batch and the single rows may be blocked differently by the matmuls: each within its rounding bound.
    bound = edit_bound(model.bundle.editors["decurved"], torch.from_numpy(z), torch.from_numpy(amounts),
                       EPS[torch.float32])[1]
    assert_within(model.edit(z, amounts), rows, 2 * bound, "batched edit")


def test_generate_returns_uint8_images(model):
    images = model.generate(model.sample(2, seed=0))
    assert images.dtype == np.uint8 and images.shape == (2, 32, 32, 3)


def test_metadata(model):
    assert model.directions == ["x", "y", "scale", "rotation"]
    assert model.editors == ["decurved"] and model.default_editor == "decurved"
    assert model.latent_dim == 8 and model.image_shape == (32, 32, 3)
    assert model.engine == "torch" and "decurved" in repr(model)


BAD_LATENTS = [
    (np.zeros((2, 7), np.float32), "latent dim is 8"),
    (np.zeros(8, np.float32), "must be 2-D"),
    (np.zeros((0, 8), np.float32), "empty batch"),
    (np.array([[np.nan] * 8], np.float32), "NaN or Inf"),
    (np.array([[np.inf] * 8], np.float32), "NaN or Inf"),
    ([["a"] * 8], "numeric"),
]


@pytest.mark.parametrize(("latents", "message"), BAD_LATENTS)
def test_bad_latents_are_refused(model, latents, message):
    with pytest.raises(ValueError, match=message):
        model.edit(latents, {"x": 1.0})
    with pytest.raises(ValueError, match=message):
        model.generate(latents)


@pytest.mark.parametrize(("edits", "message"), [
    ({"smile": 1.0}, r"unknown direction 'smile'; known directions: \['x', 'y', 'scale', 'rotation'\]"),
    ({"x": float("nan")}, "finite"),
    (np.zeros((2, 3), np.float32), r"expected \[n, K\] = \[2, 4\]"),
    (np.zeros((3, 4), np.float32), r"expected \[n, K\] = \[2, 4\]"),
    (np.full((2, 4), np.inf, np.float32), "NaN or Inf"),
])
def test_bad_edits_are_refused(model, edits, message):
    with pytest.raises(ValueError, match=message):
        model.edit(model.sample(2, seed=0), edits)


def test_unknown_editor_lists_the_known(model):
    with pytest.raises(ValueError, match=r"unknown editor 'nope'; this model has \['decurved'\]"):
        model.edit(model.sample(1, seed=0), {"x": 1.0}, editor="nope")


@pytest.mark.parametrize(("n", "message"), [(0, r"n must be >= 1, got 0"), (-3, r"n must be >= 1, got -3")])
def test_bad_sample_count_is_refused(model, n, message):
    with pytest.raises(ValueError, match=message):
        model.sample(n, seed=0)


@pytest.mark.parametrize(("seeds", "message"), [
    ([], "empty batch: pass at least one seed"),
    ([3, -1, 4], r"seeds must be >= 0, got -1"),
])
def test_bad_seeds_are_refused(model, seeds, message):
    with pytest.raises(ValueError, match=message):
        model.sample_seeds(seeds)


@pytest.mark.parametrize(("options", "threads", "spinning"), [
    ({"spinning": False, "threads": 1}, 1, "0"),
    ({}, available_cores(), "1"),  # the defaults, so the check above is seen to tell them apart
], ids=["set", "defaults"])
def test_engine_options_reach_the_onnxruntime_sessions(tiny_bundle, options, threads, spinning):
    """The options end up in the ONNX Runtime sessions that run the edit and the generator."""
    model = curvedit.load(tiny_bundle, engine="onnxruntime", device="cpu", engine_options=options)
    z = model.sample(3, seed=0)
    reference = curvedit.load(tiny_bundle, engine="torch", device="cpu")
    np.testing.assert_allclose(model.edit(z, {"x": 1.0}), reference.edit(z, {"x": 1.0}), rtol=1e-4, atol=1e-5)
    model.generate(z)
    engine = model._engine
    for key in ("generator", engine.edit_key("decurved", 3)):
        used = engine.session(key).get_session_options()
        assert used.intra_op_num_threads == threads, key
        assert used.get_session_config_entry("session.intra_op.allow_spinning") == spinning, key


@pytest.mark.skipif(not triton_available("cpu"), reason="needs Triton's interpreter (conftest sets it)")
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_engine_options_reach_the_triton_kernels(tiny_bundle, precision):
    """``precision`` picks the dtype of the packed MLP weights the kernels read."""
    model = curvedit.load(tiny_bundle, engine="triton", device="cpu", engine_options={"precision": precision})
    packed = model._engine.packed["decurved"]
    expected = torch.float16 if precision == "fp16" else torch.float32
    assert (packed.w1.dtype, packed.w2.dtype, packed.w3.dtype) == (expected,) * 3
    z = model.sample(3, seed=0)
    reference = curvedit.load(tiny_bundle, engine="torch", device="cpu").edit(z, {"x": 1.0})
    np.testing.assert_allclose(model.edit(z, {"x": 1.0}), reference, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(("engine", "options", "message"), [
    ("onnxruntime", {"bogus": 1}, "bad onnxruntime engine options"),
    ("onnxruntime", {"threads": 0}, "threads must be >= 1"),
    ("torch", {"spinning": False}, "takes no options"),
])
def test_bad_engine_options_are_refused(tiny_bundle, engine, options, message):
    with pytest.raises(ValueError, match=message):
        curvedit.load(tiny_bundle, engine=engine, engine_options=options)


@pytest.mark.parametrize("amount", [None, np.array([1.0, 2.0]), "big"])
def test_non_numeric_amount_in_a_mapping_is_a_value_error(model, amount):
    with pytest.raises(ValueError, match=r"amount for direction 'x' must be one number"):
        model.edit(model.sample(2, seed=0), {"x": amount})
