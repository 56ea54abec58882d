"""The conditional PixelCNN family: causal masks, seeded sampling, the fast loop against the naive one, and its
round trips through the registry and a bundle."""

import math

import pytest
import torch
from numerics import EPS, FLOAT16_STORAGE, assert_within, storage_bound

from curvedit.bundle import load_bundle, write_bundle
from curvedit.models.datasets import make_dataset
from curvedit.models.families import GENERATOR_FAMILIES, build_generator, families_that_encode
from curvedit.models.labelled_editors import AxesEditor
from curvedit.models.pixelcnn import DEFAULT_SEED, PixelCNN, PixelCNNConfig, dequantise, quantise
from curvedit.models.train_pixelcnn import PixelCNNTrainConfig, train_pixelcnn
from curvedit.recipes import RECIPES, VAE_FLOAT16

TINY = PixelCNNConfig(channels=8, layers=3, kernel=3, head=16, encoder_channels=8, encoder_hidden=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PixelCNN(TINY).eval()


def test_pixelcnn_is_a_registered_family_that_encodes(model):
    assert GENERATOR_FAMILIES["pixelcnn"] is PixelCNN and "pixelcnn" in families_that_encode() and model.samples
    assert not any(cls.samples for name, cls in GENERATOR_FAMILIES.items() if name != "pixelcnn")
    rebuilt = build_generator("pixelcnn", TINY.to_dict())
    assert rebuilt.config == TINY and rebuilt.image_shape == (16, 16, 3) and rebuilt.latent_dim == 8
    images = model.decode(torch.randn(3, 8))
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert model.encode(images).shape == (3, 8)
    assert model.linear_map().shape == (TINY.layers * 4 * TINY.channels, 8)


@pytest.mark.parametrize("bad", [{"image_size": 32}, {"kernel": 4}, {"kernel": 1}, {"levels": 1}, {"layers": 0}])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        PixelCNNConfig(**bad)


def test_quantised_colours_round_trip():
    classes = torch.arange(64).reshape(1, 8, 8)
    assert torch.equal(quantise(dequantise(classes, PixelCNNConfig()), PixelCNNConfig()), classes)


def test_the_palette_holds_the_shapes_background_grey_exactly():
    """The renders' background (0.1 of full scale: 25.5 grey levels) quantises to the palette's 26, the
    background of the drawn real images (``real_images.BACKGROUND``) and of the pixel instrument; every palette
    colour renders to exactly its own grey levels."""
    from curvedit.evaluation.real_images import BACKGROUND
    from curvedit.models.files import to_uint8
    from curvedit.models.renderer import render, sample_factors

    config = PixelCNNConfig()
    assert config.palette.tolist() == [26, 98, 170, 242]
    factors = sample_factors(4, torch.Generator().manual_seed(0))
    renders = torch.nn.functional.avg_pool2d(render(factors) * 2 - 1, 2)
    corners = to_uint8(dequantise(quantise(renders, config), config))[:, 0, 0]
    assert (corners == torch.tensor(BACKGROUND).numpy()).all()
    every = to_uint8(dequantise(torch.arange(64).reshape(1, 8, 8), config)).reshape(-1, 3)
    assert set(every.flatten().tolist()) == {26, 98, 170, 242}


def test_a_palette_out_of_range_is_refused():
    with pytest.raises(ValueError, match="palette_low < palette_high"):
        PixelCNNConfig(palette_low=200, palette_high=100)


@pytest.mark.parametrize("position", [(0, 0), (0, 5), (3, 0), (7, 7), (15, 15), (9, 14)])
def test_masks_are_causal_and_have_no_blind_spot(model, position):
    """The gradient of the logits at (r, c) reaches only pixels before it in raster order — and does reach the
    pixel to its left and the one above (the gated PixelCNN has no blind spot)."""
    r, c = position
    x = torch.randn(1, TINY.channels, 16, 16, requires_grad=True)
    model.stacks(x, model.conditioning(torch.randn(1, 8)))[0, :, r, c].sum().backward()
    reached = x.grad.abs().sum(dim=(0, 1)) > 0
    order = torch.arange(256).reshape(16, 16)
    assert not reached[order >= r * 16 + c].any()
    if c > 0:
        assert reached[r, c - 1]
    if r > 0:
        assert reached[r - 1, c] and reached[r - 1, min(c + 1, 15)]


def test_equal_latent_and_seed_give_equal_images_at_any_batch_position(model):
    h = torch.randn(4, 8)
    batch = model.sample(h, [5, 6, 7, 8])
    assert torch.equal(batch, model.sample(h, [5, 6, 7, 8]))
    assert torch.equal(batch[2:3], model.sample(h[2:3], [7]))
    assert not torch.equal(batch, model.sample(h, [9, 10, 11, 12]))
    assert torch.equal(model.decode(h), dequantise(model.sample(h, [DEFAULT_SEED] * 4), TINY))


def test_conditioning_changes_the_output(model):
    h = torch.randn(2, 8)
    classes = torch.randint(TINY.classes, (2, 16, 16))
    assert not torch.allclose(model.logits(classes, h), model.logits(classes, h.flip(0)))
    assert not torch.equal(model.sample(h, [1, 1]), model.sample(h.flip(0) * 3, [1, 1]))


@pytest.mark.parametrize("config", [TINY, PixelCNNConfig(channels=8, layers=2, kernel=5, head=16,
                                                         encoder_channels=8, encoder_hidden=32)])
def test_fast_sampling_gives_the_naive_loops_images(config):
    torch.manual_seed(1)
    model = PixelCNN(config).eval()
    h, seeds = torch.randn(5, 8) * 2, [0, 1, 2, 3, 4]
    assert model.reach < 16  # the crops are exercised
    assert torch.equal(model.sample(h, seeds, fast=True), model.sample(h, seeds, fast=False))


def test_fast_step_logits_match_a_full_forward(model):
    """Per pixel, on a complete random image: the cropped computation's logits equal the full forward's."""
    classes, h = torch.randint(TINY.classes, (3, 16, 16)), torch.randn(3, 8)
    cond = model.conditioning(h)
    full = model.logits(classes, h)
    for r, logits_of in model._fast_rows(classes, cond):
        for col in (0, 4, 15):
            torch.testing.assert_close(logits_of(col), full[:, :, r, col], rtol=1e-5, atol=1e-5)


def test_a_seed_count_other_than_the_batch_is_refused(model):
    with pytest.raises(ValueError, match="one seed per latent"):
        model.sample(torch.randn(3, 8), [0, 1])


def test_a_bundle_round_trips_a_pixelcnn(tmp_path, model):
    editor = AxesEditor(8, ["x", "y"], [0, 1])
    path = write_bundle(tmp_path / "b", name="tiny-pixelcnn", version="0", generator=model,
                        editors={"axes": (editor, "supervised", {})}, default_editor="axes")
    bundle = load_bundle(path)
    h, images = torch.randn(2, 8), torch.rand(2, 3, 16, 16) * 2 - 1
    assert bundle.generator.config == TINY
    assert torch.equal(bundle.generator.decode(h), model.decode(h))
    torch.testing.assert_close(bundle.generator.encode(images), model.encode(images))


def test_a_finished_run_reloads_from_its_checkpoint_and_refuses_other_settings(tmp_path):
    """The learning rate follows a cosine over ``steps``, so a run resumes only with the same settings."""
    training = PixelCNNTrainConfig(steps=4, batch_size=4, checkpoint_every=2, encoder_from=None)
    first = train_pixelcnn(tmp_path, TINY, training, progress=False)
    assert (tmp_path / "samples.png").is_file()
    (tmp_path / "generator.safetensors").unlink()
    again = train_pixelcnn(tmp_path, TINY, training, progress=False)  # nothing left to train: writes the weights
    assert (tmp_path / "generator.safetensors").is_file()
    classes, h = torch.randint(TINY.classes, (2, 16, 16)), torch.randn(2, 8)
    torch.testing.assert_close(again.logits(classes, h), first.logits(classes, h))
    with pytest.raises(ValueError, match="another PixelCNN"):
        train_pixelcnn(tmp_path, TINY, PixelCNNTrainConfig(steps=6, batch_size=4, encoder_from=None),
                       progress=False)


def test_the_recipe_conditions_on_the_shapes_vae_encoder_and_reuses_its_editors():
    """``h`` is the shapes-vae's latent, so its editors apply as they are; the encoder copied into the PixelCNN
    must have the VAE's shape, and it is stored once (half precision, no encoder graph)."""
    recipe, vae = RECIPES["shapes-pixelcnn"], RECIPES["shapes-vae"].config
    assert recipe.family == "pixelcnn" and recipe.editors_from == "shapes-vae" and recipe.editors == ()
    assert recipe.train_config.encoder_from == "shapes-vae" and recipe.regressor == "shapes32"
    assert (recipe.config.latent_dim, recipe.config.encoder_channels, recipe.config.encoder_hidden) == (
        vae.latent_dim, vae.base_channels, vae.hidden)
    assert set(recipe.skip_graphs) == {"encoder.onnx"} and recipe.generator_borrow == ("encoder.", "shapes-vae")


@pytest.mark.parametrize(("exporter", "reason"), [("torchscript", "no one-graph export"),
                                                  ("dynamo", "dynamo export failed")])
def test_exporting_the_sampler_fails_at_once_with_a_reason(model, exporter, reason):
    """Engines that export on demand fall back to PyTorch on an ``ExportError``; the sampler says so up front."""
    from curvedit.export.graphs import GeneratorGraph, GraphSpec, Port
    from curvedit.export.onnx_export import ExportError, build_graph

    spec = GraphSpec("generator", "generator.onnx", GeneratorGraph(model).eval(), (Port("z", ("batch", 8)),),
                     (Port("image", ("batch", 16, 16, 3), "uint8"),), None, ())
    with pytest.raises(ExportError, match=reason):
        build_graph(spec, exporter)


def test_a_bundle_without_a_generator_graph_serves_through_pytorch_on_every_engine(tmp_path, model):
    """No ``generator.onnx``: the ONNX Runtime engine falls back to PyTorch for the generator and gives the same
    images and latents as the torch engine."""
    import curvedit

    path = write_bundle(tmp_path / "b", name="tiny-pixelcnn", version="0", generator=model,
                        editors={"axes": (AxesEditor(8, ["x", "y"], [0, 1]), "supervised", {})},
                        default_editor="axes")
    torch_model, ort_model = curvedit.load(path, engine="torch"), curvedit.load(path, engine="onnxruntime")
    z = torch_model.edit(torch_model.sample(3, seed=4), {"x": 1.0})
    images = torch_model.generate(z)
    assert images.shape == (3, 16, 16, 3)
    assert (ort_model.generate(z) == images).all()
    torch.testing.assert_close(torch.from_numpy(ort_model.encode(images)),
                               torch.from_numpy(torch_model.encode(images)), rtol=1e-4, atol=1e-4)


def test_weights_stored_in_half_precision_load_back_as_float32(tmp_path, model):
    """``generator_float16`` stores the named weights as float16 in the file (and says so in the manifest); the
    loaded module is float32 and equals the original rounded to half precision; the other weights are exact."""
    from safetensors.torch import load_file

    path = write_bundle(tmp_path / "b", name="tiny-pixelcnn", version="0", generator=model,
                        editors={"axes": (AxesEditor(8, ["x", "y"], [0, 1]), "supervised", {})},
                        default_editor="axes", generator_float16=("encoder.",))
    dtypes = {key: value.dtype for key, value in load_file(path / "generator.safetensors").items()}
    assert {d for k, d in dtypes.items() if k.startswith("encoder.")} == {torch.float16}
    assert {d for k, d in dtypes.items() if not k.startswith("encoder.")} == {torch.float32}
    bundle = load_bundle(path)
    assert bundle.manifest["generator"]["float16"] == ["encoder."]
    loaded, original = bundle.generator.state_dict(), model.state_dict()
    assert all(v.dtype == torch.float32 for v in loaded.values())
    for key, value in original.items():
        expected = value.half().float() if key.startswith("encoder.") else value
        assert torch.equal(loaded[key], expected), key


@torch.no_grad()
def test_half_precision_storage_moves_a_vaes_outputs_only_by_its_rounding(tmp_path):
    """The shipped 32×32 VAEs store their largest weights in float16 (recipes.VAE_FLOAT16): encoded latents and
    decoded images stay within the bound that rounding allows (numerics.storage_bound) of the float32 module."""
    from curvedit.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=8)).eval()
    path = write_bundle(tmp_path / "b", name="half", version="0", generator=vae,
                        editors={"axes": (AxesEditor(8, ["x", "y"], [0, 1]), "supervised", {})},
                        default_editor="axes", generator_float16=VAE_FLOAT16)
    half = load_bundle(path).generator
    images = make_dataset("shapes", seed=0).held_out(64)
    unit = FLOAT16_STORAGE + 2 * math.sqrt(2048) * EPS[torch.float32]  # and both float32 computations' rounding
    latents = storage_bound(vae.encoder, images, unit)[:, :8]
    assert_within(half.encode(images), vae.encode(images), latents, "encoder")
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    decoder = torch.nn.Sequential(vae.fc, *vae.body)
    assert_within(half.decode(z), vae.decode(z), storage_bound(decoder, z, unit), "decoder")
