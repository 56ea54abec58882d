"""Real images in: encode / edit_images on a model that can encode, the documented rules for arrays and files,
and a clear error for everything refused."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import curvedit
from curvedit.cli import main
from curvedit.images import MAX_PIXELS, check_images, decode_image_file
from curvedit.models.files import from_uint8, to_uint8


@pytest.fixture(scope="module")
def vae(tiny_vae_bundle):
    return curvedit.load(tiny_vae_bundle, engine="torch")


@pytest.fixture(scope="module")
def images(vae):
    return vae.generate(vae.sample(3, seed=4))


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_encode_is_the_posterior_mean_and_edit_images_is_encode_edit_decode(vae, images):
    z = vae.encode(images)
    assert z.shape == (3, 8) and z.dtype == np.float32
    with torch.no_grad():
        expected = vae.bundle.generator.encode(from_uint8(images)).numpy()
    np.testing.assert_allclose(z, expected, atol=1e-6)
    edited = vae.edit_images(images, {"x": 1.0})
    np.testing.assert_array_equal(edited, vae.generate(vae.edit(z, {"x": 1.0})))
    assert edited.shape == images.shape and edited.dtype == np.uint8


def test_grayscale_is_copied_to_the_three_channels(vae, images):
    grey = images[..., 0]
    rgb = np.repeat(grey[..., None], 3, axis=3)
    np.testing.assert_array_equal(vae.encode(grey), vae.encode(rgb))
    np.testing.assert_array_equal(vae.encode(grey[..., None]), vae.encode(rgb))


@pytest.mark.parametrize(("make", "message"), [
    (lambda im: im.astype(np.float32) / 255, r"must be uint8 0\.\.255, got float32"),
    (lambda im: np.concatenate([im, np.full((*im.shape[:3], 1), 255, np.uint8)], axis=3), "RGBA"),
    (lambda im: im[:, :16, :16], r"images are 16×16, this model takes 32×32: resize them first"),
    (lambda im: im[:0], "empty batch"),
    (lambda im: np.zeros((1, 0, 0, 3), np.uint8), "at least one pixel"),
    (lambda im: im[0, 0, 0], r"must be \[n, H, W, 3\]"),
    (lambda im: np.zeros((1, 32, 32, 2), np.uint8), "2 channels"),
])
def test_refused_arrays_name_the_fix(vae, images, make, message):
    with pytest.raises(ValueError, match=message):
        vae.encode(make(images))
    with pytest.raises(ValueError, match=message):
        vae.edit_images(make(images), {"x": 1.0})


def test_a_model_without_an_encoder_names_the_families_that_have_one(tiny_bundle, images):
    gan = curvedit.load(tiny_bundle, engine="torch")
    assert not gan.can_encode
    for call in (lambda: gan.encode(images), lambda: gan.edit_images(images, {"x": 1.0})):
        with pytest.raises(ValueError, match=r"has no encoder.*families that can: \[.*'vae'.*\]"):
            call()


def test_image_files_are_fitted_to_the_model(images):
    shape = (32, 32, 3)
    np.testing.assert_array_equal(decode_image_file(png(images[0]), shape), images[0])
    big = np.asarray(Image.fromarray(images[0]).resize((96, 64)))  # wider: centre-cropped, then resized
    assert decode_image_file(png(big), shape).shape == shape
    grey = decode_image_file(png(images[0], "L"), shape)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    rgba = np.concatenate([images[0], np.zeros((32, 32, 1), np.uint8)], axis=2)  # fully transparent
    np.testing.assert_array_equal(decode_image_file(png(rgba), shape), np.zeros(shape, np.uint8))


@pytest.mark.parametrize(("data", "message"), [
    (b"", "is empty"),
    (b"this is not an image", "not a readable image"),
    ("truncated", "not a readable image"),
    ("oversized", f"over the limit of {MAX_PIXELS:,} pixels"),
])
def test_refused_files_name_the_problem(images, data, message):
    if data == "truncated":
        data = png(images[0])[:-40]
    elif data == "oversized":
        buffer = io.BytesIO()
        Image.new("L", (4097, 4097)).save(buffer, format="PNG")  # compresses to a few KB
        data = buffer.getvalue()
    with pytest.raises(ValueError, match=message):
        decode_image_file(data, (32, 32, 3))


def test_array_rules_stand_alone():
    with pytest.raises(ValueError, match="resize them first"):
        check_images(np.zeros((1, 8, 8, 3), np.uint8), (32, 32, 3))
    assert check_images(np.zeros((2, 32, 32), np.uint8), (32, 32, 3)).shape == (2, 32, 32, 3)


def test_onnxruntime_encodes_like_torch(tiny_vae_bundle, images):
    torch_model = curvedit.load(tiny_vae_bundle, engine="torch")
    ort_model = curvedit.load(tiny_vae_bundle, engine="onnxruntime")
    np.testing.assert_allclose(ort_model.encode(images), torch_model.encode(images), atol=1e-4)
    assert ort_model._engine.origins["encoder"] == "memory"
    np.testing.assert_array_equal(to_uint8(from_uint8(images)), images)


def test_cli_edits_image_files(tiny_vae_bundle, images, tmp_path, capsys):
    paths = []
    for i, image in enumerate(images[:2]):
        paths += ["--image", str(tmp_path / f"in{i}.png")]
        (tmp_path / f"in{i}.png").write_bytes(png(image))
    out = tmp_path / "out"
    assert main(["edit", "--model", str(tiny_vae_bundle), "--engine", "torch", *paths, "--edit", "x=1",
                 "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"00_input.png", "00_edited.png", "01_input.png", "01_edited.png",
                                                 "edit.png", "latents.npy", "edited.npy"}
    model = curvedit.load(tiny_vae_bundle, engine="torch")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "01_edited.png")),
                                  model.edit_images(images[1:2], {"x": 1.0})[0])


def test_cli_refuses_images_for_a_model_without_an_encoder(tiny_bundle, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(png(np.zeros((32, 32, 3), np.uint8)))
    assert main(["edit", "--model", str(tiny_bundle), "--image", str(tmp_path / "a.png"), "--edit", "x=1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "has no encoder" in capsys.readouterr().err
