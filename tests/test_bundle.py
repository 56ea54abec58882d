"""Bundles: round trip, checksums and versions verified, tampering refused."""

import json
import shutil

import numpy as np
import pytest
import torch

import curvedit
from curvedit.bundle import BundleError, load_bundle, manifest_digest, read_manifest, write_manifest
from curvedit.models.files import sha256_file


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "copy")


def test_loading_gives_back_the_written_modules(tmp_path):
    """Every module comes back with the exact tensors it was written with, and computes the same outputs."""
    from conftest import make_tiny_bundle, tiny_modules

    written = dict(zip(("generator", "editor", "regressor"), tiny_modules(), strict=True))
    bundle = load_bundle(make_tiny_bundle(tmp_path / "b"))
    loaded = {"generator": bundle.generator, "editor": bundle.editors["decurved"], "regressor": bundle.regressor}
    for name, module in written.items():
        assert type(loaded[name]) is type(module), name
        state = loaded[name].state_dict()
        assert state.keys() == module.state_dict().keys(), name
        for key, tensor in module.state_dict().items():
            assert torch.equal(state[key], tensor), f"{name}.{key}"
    z, t = torch.randn(3, 8), torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(loaded["editor"].edit(z, t), written["editor"].edit(z, t))
        images = written["generator"](z)
        assert torch.equal(loaded["generator"](z), images)
        assert torch.equal(loaded["regressor"](images), written["regressor"](images))


def test_manifest_describes_the_bundle(tiny_bundle):
    manifest = load_bundle(tiny_bundle).manifest
    assert manifest["format_version"] == 2 and manifest["latent_dim"] == 8
    assert manifest["image_shape"] == [32, 32, 3]
    assert manifest["editors"]["decurved"]["directions"] == [
        {"index": k, "name": name} for k, name in enumerate(["x", "y", "scale", "rotation"])]
    assert manifest["editors"]["decurved"]["kind"] == "decurved"
    expected = {"generator.safetensors", "regressor.safetensors", "editor_decurved.safetensors"}
    assert set(manifest["files"]) == expected
    for name, digest in manifest["files"].items():
        assert digest == sha256_file(tiny_bundle / name), name


def test_weights_are_safetensors_not_pickle(tiny_bundle):
    for name in read_manifest(tiny_bundle)["files"]:
        header_length = int.from_bytes((tiny_bundle / name).read_bytes()[:8], "little")
        header = json.loads((tiny_bundle / name).read_bytes()[8 : 8 + header_length])
        assert all("dtype" in v for k, v in header.items() if k != "__metadata__")


@pytest.mark.parametrize("name", ["generator.safetensors", "editor_decurved.safetensors"])
def test_tampered_weight_file_is_refused(bundle_copy, name):
    data = bytearray((bundle_copy / name).read_bytes())
    data[-1] ^= 0xFF
    (bundle_copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"checksum mismatch for .*{name}"):
        curvedit.load(bundle_copy)


def test_missing_weight_file_is_refused(bundle_copy):
    (bundle_copy / "generator.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("format_version", 1, "format_version 1 is not supported"),
    ("format_version", 3, "format_version 3 is not supported"),
    ("format", "something-else", "not a 'curvedit-bundle' manifest"),
])
def test_unsupported_manifest_is_refused(bundle_copy, key, value, message):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest[key] = value
    write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_unlisted_weight_file_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["files"]["generator.safetensors"]
    write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="not listed"):
        load_bundle(bundle_copy)


# -- what a model does is integrity-checked (issue 8, item 5) ----------------------------------------------------
def _swap_directions(manifest: dict) -> dict:
    directions = manifest["editors"]["decurved"]["directions"]
    directions[0]["name"], directions[1]["name"] = directions[1]["name"], directions[0]["name"]
    return manifest


def _swap_directions_everywhere(manifest: dict) -> dict:
    manifest = _swap_directions(manifest)
    config = manifest["editors"]["decurved"]["config"]["directions"]
    config[0], config[1] = config[1], config[0]
    return manifest


def _set(key, value):
    def change(manifest: dict) -> dict:
        manifest[key] = value
        return manifest
    return change


def _hidden_layers(manifest: dict) -> dict:
    manifest["editors"]["decurved"]["config"]["hidden"] = 32
    return manifest


@pytest.mark.parametrize("change", [_swap_directions, _swap_directions_everywhere,
                                    _set("image_shape", [64, 64, 3]), _set("latent_dim", 9), _set("name", "other"),
                                    _hidden_layers])
def test_a_hand_edited_manifest_is_refused(bundle_copy, change):
    """Editing manifest.json by hand (x and y swapped, another image shape or latent dim…) breaks its checksum."""
    manifest = change(json.loads((bundle_copy / "manifest.json").read_text()))
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest\.json does not match its own checksum"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(("change", "message"), [
    (_swap_directions, r"editor 'decurved' lists directions \['y', 'x', 'scale', 'rotation'\].*weights hold "
                       r"\['x', 'y', 'scale', 'rotation'\]"),
    (_swap_directions_everywhere, "the weights were written as"),
    (_hidden_layers, "the weights were written as"),
    (_set("image_shape", [64, 64, 3]), r"image_shape \[64, 64, 3\] disagrees with the generator's \[32, 32, 3\]"),
    (_set("latent_dim", 9), "latent_dim 9 disagrees with the generator's 8"),
])
def test_a_manifest_that_disagrees_with_its_weights_is_refused(bundle_copy, change, message):
    """Even re-stamped with a fresh checksum, a manifest must agree with the checksummed weight files."""
    write_manifest(bundle_copy, change(json.loads((bundle_copy / "manifest.json").read_text())))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_digest_is_the_manifest_checksum_and_covers_every_file(bundle_copy, tiny_bundle):
    model = curvedit.load(bundle_copy, engine="torch")
    manifest = read_manifest(bundle_copy)
    assert model.digest == manifest["manifest_sha256"] == manifest_digest(manifest)
    assert len(model.digest) == 64
    from curvedit.bundle import add_editor

    add_editor(bundle_copy, "copy", model.bundle.editors["decurved"], "supervised")
    assert curvedit.load(bundle_copy, engine="torch").digest != model.digest  # new file, new digest
    assert curvedit.load(tiny_bundle, engine="torch").digest == model.digest  # the untouched original


def test_expect_digest_pins_the_bundle(tiny_bundle, bundle_copy):
    digest = curvedit.load(tiny_bundle, engine="torch").digest
    assert curvedit.load(tiny_bundle, engine="torch", expect_digest=digest).digest == digest
    assert curvedit.load(tiny_bundle, engine="torch", expect_digest=digest[:12].upper()).digest == digest
    with pytest.raises(BundleError, match="at least 12 hex digits"):
        curvedit.load(tiny_bundle, engine="torch", expect_digest=digest[:8])
    from curvedit.bundle import add_editor

    add_editor(bundle_copy, "copy", load_bundle(bundle_copy).editors["decurved"], "supervised")
    with pytest.raises(BundleError, match=f"not the expected {digest}"):
        curvedit.load(bundle_copy, engine="torch", expect_digest=digest)


def test_not_a_bundle_is_refused(tmp_path):
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        curvedit.load(tmp_path)


def test_bundle_errors_are_value_errors():
    assert issubclass(BundleError, ValueError)  # callers catch every bad-input error of the API as ValueError


def test_load_returns_engine_results_equal_to_modules(tiny_bundle):
    model = curvedit.load(tiny_bundle, engine="torch")
    z = model.sample(4, seed=1)
    edited = model.edit(z, {"x": 1.0})
    with torch.no_grad():
        expected = model.bundle.editors["decurved"].edit(torch.from_numpy(z), torch.tensor([[1.0, 0, 0, 0]] * 4))
    np.testing.assert_allclose(edited, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_rewriting_a_bundle_leaves_no_stale_files(bundle_copy):
    from conftest import make_tiny_bundle

    (bundle_copy / "edit_old.onnx").write_bytes(b"left over from an earlier bundle")
    make_tiny_bundle(bundle_copy, directions=("x", "y"))
    assert not (bundle_copy / "edit_old.onnx").exists()
    assert load_bundle(bundle_copy).editors["decurved"].directions == ["x", "y"]
    assert [p.name for p in bundle_copy.parent.iterdir() if p.name.startswith(".")] == []


def test_a_non_bundle_directory_is_not_replaced(tmp_path):
    from conftest import make_tiny_bundle

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a bundle"):
        make_tiny_bundle(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
