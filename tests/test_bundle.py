"""Bundles: round trip, checksums and versions verified, tampering refused."""

import json
import shutil

import numpy as np
import pytest
import torch

import curvedit
from curvedit.bundle import BundleError, load_bundle, read_manifest
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
    assert manifest["format_version"] == 1 and manifest["latent_dim"] == 8
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
    ("format_version", 2, "format_version 2 is not supported"),
    ("format", "something-else", "format is"),
])
def test_unsupported_manifest_is_refused(bundle_copy, key, value, message):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest[key] = value
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_unlisted_weight_file_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["files"]["generator.safetensors"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not listed"):
        load_bundle(bundle_copy)


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


def test_a_decurved_editor_saved_before_the_mixing_layer_still_loads(tmp_path):
    """Bundles written before DeCurvEd had a mixing layer carry no "mixing" key: they load as plain flows."""
    from conftest import randomize

    from curvedit.bundle import write_bundle
    from curvedit.models.editors import DeCurvEd
    from curvedit.models.generator import Generator, GeneratorConfig

    editor = randomize(DeCurvEd(8, ["x", "y"], hidden=8, layers=2)).eval()
    path = write_bundle(tmp_path / "old", name="old", version="0.1", generator=Generator(GeneratorConfig()).eval(),
                        editors={"decurved": (editor, "supervised", {})}, default_editor="decurved", seed=0)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["editors"]["decurved"]["config"]["mixing"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_bundle(path).editors["decurved"]
    assert loaded.flow.mixing is None
    z, t = torch.randn(3, 8), torch.randn(3, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.edit(z, t), editor.edit(z, t))
