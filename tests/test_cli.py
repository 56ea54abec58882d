"""The command line for people: edit, traverse, info, train — each writes what it says."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import curvedit
from curvedit.cli import main
from curvedit.export.onnx_export import export_bundle


def tile(path, row: int, column: int, size: int = 32, pad: int = 2) -> np.ndarray:
    """The image at ``(row, column)`` of a grid PNG written at zoom 1."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    top, left = pad + row * (size + pad), pad + column * (size + pad)
    return grid[top : top + size, left : left + size]


def test_edit_writes_latents_and_grid(tiny_bundle, tmp_path):
    out = tmp_path / "edit"
    assert main(["edit", "--model", str(tiny_bundle), "--engine", "torch", "--seed", "2", "--count", "3",
                 "--edit", "x=1.0", "--edit", "scale=-0.5", "--out", str(out), "--zoom", "1"]) == 0
    model = curvedit.load(tiny_bundle, engine="torch")
    latents, edited = np.load(out / "latents.npy"), np.load(out / "edited.npy")
    np.testing.assert_array_equal(latents, model.sample(3, seed=2))
    np.testing.assert_allclose(edited, model.edit(latents, {"x": 1.0, "scale": -0.5}), rtol=1e-6, atol=1e-6)
    assert Image.open(out / "edit.png").size == (3 * 34 + 2, 2 * 34 + 2)  # 3 columns, 2-pixel gutters
    images = model.generate(np.concatenate([latents, edited])).astype(int)  # input row, then edited row
    for i, image in enumerate(images):
        assert np.abs(tile(out / "edit.png", *divmod(i, 3)).astype(int) - image).max() <= 1, i


def test_edit_reads_latents_from_npy(tiny_bundle, tmp_path):
    np.save(tmp_path / "z.npy", np.ones((2, 8), np.float32))
    assert main(["edit", "--model", str(tiny_bundle), "--engine", "torch", "--latents", str(tmp_path / "z.npy"),
                 "--edit", "y=0.5", "--out", str(tmp_path / "o")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "latents.npy"), np.ones((2, 8), np.float32))


def test_traverse_writes_one_labelled_row_per_direction(tiny_bundle, tmp_path):
    """Row k moves direction k, column j by the j-th of 5 amounts evenly spaced over [-1.5, 1.5] (the default);
    the direction names label the rows and the amounts the columns."""
    out = tmp_path / "t.png"
    assert main(["traverse", "--model", str(tiny_bundle), "--engine", "torch", "--steps", "5", "--zoom", "1",
                 "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out).convert("RGB"))
    grid_h, grid_w = 4 * 34 + 2, 5 * 34 + 2  # 4 directions × 5 amounts of 32×32 with 2-pixel gutters
    left, top = sheet.shape[1] - grid_w, sheet.shape[0] - grid_h
    assert left > 20 and top > 8, "room for the row and column labels"
    assert (sheet[top:, :left] < 128).any() and (sheet[:top, left:] < 128).any(), "labels are drawn"
    grid = Image.fromarray(np.ascontiguousarray(sheet[top:, left:]))
    grid.save(tmp_path / "grid.png")
    model = curvedit.load(tiny_bundle, engine="torch")
    z = model.sample(1, seed=0)
    for row, name in enumerate(model.directions):
        for column, amount in enumerate(np.linspace(-1.5, 1.5, 5)):
            expected = model.generate(model.edit(z, {name: amount}))[0].astype(int)
            actual = tile(tmp_path / "grid.png", row, column).astype(int)
            assert np.abs(actual - expected).max() <= 1, (name, amount)


def test_an_unwritable_output_is_one_line_not_a_traceback(tiny_bundle, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["traverse", "--model", str(tiny_bundle), "--engine", "torch", "--out", str(blocker / "t.png")])
    err = capsys.readouterr().err
    assert code == 1 and "curvedit traverse: error:" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_info_prints_directions(tiny_bundle, capsys):
    assert main(["info", "--model", str(tiny_bundle)]) == 0
    text = capsys.readouterr().out
    assert "0:x, 1:y, 2:scale, 3:rotation" in text and "sha256 verified" in text
    assert f"digest      {curvedit.load(tiny_bundle, engine='torch').digest}" in text
    assert main(["info", "--model", str(tiny_bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latent_dim"] == 8


@pytest.mark.parametrize(("args", "message"), [
    (["edit", "--edit", "smile=1"], "unknown direction 'smile'"),
    (["edit"], "give at least one --edit"),
    (["edit", "--latents", "missing.npy", "--edit", "x=1"], "does not exist"),
])
def test_bad_input_is_one_clear_line(tiny_bundle, tmp_path, capsys, args, message):
    code = main([*args[:1], "--model", str(tiny_bundle), "--engine", "torch", "--out", str(tmp_path), *args[1:]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_malformed_edit_flag_is_a_usage_error(tiny_bundle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["edit", "--model", str(tiny_bundle), "--edit", "scale"])
    assert exc.value.code == 2
    assert "expected NAME=AMOUNT (e.g. scale=1.5), got 'scale'" in capsys.readouterr().err


def test_train_editor_adds_an_editor_to_a_bundle(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    assert main(["train", "editor", "--model", str(bundle), "--mode", "unsupervised", "--steps", "3",
                 "--directions", "3", "--name", "unsup"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["editors"]["unsup"]
    assert [d["name"] for d in entry["directions"]] == ["d0", "d1", "d2"]
    assert "reconstructor_accuracy" in entry["training"] and entry["file"] in manifest["files"]


def test_console_script_is_installed():
    script = shutil.which("curvedit", path=str(Path(sys.executable).parent))  # beside this environment's python
    assert script is not None, "no `curvedit` script: install the package (pip install -e .)"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    for command in ("edit", "traverse", "info", "train"):
        assert command in result.stdout


def test_train_default_writes_a_loadable_bundle_and_reuses_finished_stages(tmp_path, capsys):
    args = ["train", "default", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "bundle"),
            "--regressor-steps", "2", "--generator-steps", "2", "--editor-steps", "2", "--no-export"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    editors = ["decurved", "sefa", "ganspace", "linear", "rbf", "attrdiff", "neuralode"]
    assert set(manifest["training"]["seconds"]) == {"regressor", "generator", *(f"editor {e}" for e in editors)}
    assert list(manifest["editors"]) == editors and manifest["default_editor"] == "decurved"
    assert manifest["name"] == "shapes32" and manifest["generator"]["kind"] == "dcgan"
    assert "purity" in manifest["editors"]["decurved"]["training"]
    assert (tmp_path / "run" / "generator" / "samples.png").is_file()
    assert main(args) == 0  # the finished regressor and GAN are reused, the editors resume from checkpoints
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["training"]["seconds"]["regressor"] == "reused"
    assert manifest["training"]["seconds"]["generator"] == "reused"


def test_train_recipe_digits_vae_writes_an_encoding_bundle_with_unsupervised_directions(tmp_path):
    out = tmp_path / "bundle"
    assert main(["train", "recipe", "digits-vae", "--run", str(tmp_path / "run"), "--out", str(out),
                 "--generator-steps", "3", "--editor-steps", "2", "--no-export"]) == 0
    # Exporting is tested on its own (test_export.py); of this recipe's graphs only the encoder is new here.
    assert [r.filename for r in export_bundle(out, only=["encoder.onnx"]) if r.written] == ["encoder.onnx"]
    model = curvedit.load(out, engine="onnxruntime")
    assert model.name == "digits-vae" and model.family == "vae" and model.can_encode
    assert model.directions == [f"d{k}" for k in range(8)]
    assert "encoder.onnx" in model.bundle.manifest["onnx"]
    images = model.generate(model.sample(2, seed=0))
    assert (images[..., 0] == images[..., 1]).all(), "digits decode to grey RGB"
    assert model.encode(images).shape == (2, 8)


def test_edit_reads_latents_from_npz(tiny_bundle, tmp_path):
    np.savez(tmp_path / "z.npz", latents=np.ones((2, 8), np.float32))
    assert main(["edit", "--model", str(tiny_bundle), "--engine", "torch", "--latents", str(tmp_path / "z.npz"),
                 "--edit", "y=0.5", "--out", str(tmp_path / "o")]) == 0
    assert np.load(tmp_path / "o" / "edited.npy").shape == (2, 8)


def test_unreachable_server_is_one_clear_line(capsys):
    assert main(["client", "health", "--server", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "Traceback" not in err
