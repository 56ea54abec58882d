"""Bring your own generator, end to end as docs/BRING_YOUR_OWN.md tells it: the example's factory → a few training
steps → a bundle with verified ONNX graphs → a real server on loopback → edits over gRPC."""

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import curvedit
from curvedit.cli import main
from curvedit.client import Client
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "byo_generator"


@pytest.fixture
def in_example(monkeypatch):
    """Run from the example's folder, as its docs do (the factory is imported from the current directory)."""
    monkeypatch.chdir(EXAMPLE)
    monkeypatch.delitem(sys.modules, "blobs", raising=False)
    yield EXAMPLE
    sys.modules.pop("blobs", None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The documented unsupervised command, with a handful of steps."""
    out = tmp_path_factory.mktemp("byo") / "blobs"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(EXAMPLE)
        assert main(["train", "editor", "--generator", "blobs:make_generator", "--out", str(out),
                     "--steps", "3"]) == 0
    sys.modules.pop("blobs", None)
    return out


def test_the_bundle_holds_the_generator_and_verified_graphs(trained):
    model = curvedit.load(trained, engine="torch")
    assert model.family == "external" and model.latent_dim == 4 and model.image_shape == (32, 32, 3)
    assert model.directions == ["d0", "d1", "d2", "d3"] and not model.can_encode
    graphs = model.bundle.manifest["onnx"]
    assert {"generator.onnx", "edit.onnx"} <= set(graphs)
    sys.path.insert(0, str(EXAMPLE))
    try:
        import blobs

        z = model.sample(5, seed=3)
        expected = blobs.make_generator()(torch.from_numpy(z))
    finally:
        sys.path.remove(str(EXAMPLE))
    np.testing.assert_array_equal(model.generate(z), ((expected.clamp(-1, 1) + 1) * 127.5).round().to(
        torch.uint8).permute(0, 2, 3, 1).numpy())


def test_served_on_loopback_and_edited_over_grpc(trained):
    model = curvedit.load(trained, engine="onnxruntime")
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, models=(str(trained),), max_batch_size=8)
    with BackgroundServer(config) as bg, Client(f"127.0.0.1:{bg.port}", timeout=60) as client:
        assert [m.name for m in client.list_models()] == ["blobs"]
        result = client.edit(seeds=[0, 1, 2], edits={"d1": 0.8}, images="raw")
    z = model.sample(3, seed=0)
    edited = model.edit(z, {"d1": 0.8})
    np.testing.assert_allclose(result.latents, edited, atol=1e-5)
    assert result.images.shape == (3, 32, 32, 3)
    assert not np.array_equal(result.latents, z)


def test_supervised_with_the_users_regressor_ties_directions_to_attributes(tmp_path, in_example):
    out = tmp_path / "sup"
    assert main(["train", "editor", "--generator", "blobs:make_generator", "--out", str(out), "--steps", "3",
                 "--mode", "supervised", "--regressor", "blobs:make_regressor", "--directions", "x,y"]) == 0
    model = curvedit.load(out, engine="torch")
    assert model.directions == ["x", "y"]
    assert model.bundle.manifest["editors"]["decurved"]["mode"] == "supervised"
    assert "purity" in model.bundle.manifest["editors"]["decurved"]["training"]


def test_a_bundle_serves_from_onnx_without_the_users_package(trained, tmp_path, monkeypatch):
    copy = shutil.copytree(trained, tmp_path / "copy")
    monkeypatch.chdir(tmp_path)  # blobs is no longer importable from here
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(EXAMPLE), "")])
    sys.modules.pop("blobs", None)
    model = curvedit.load(copy, engine="torch")
    assert model.bundle.generator.inner is None and "blobs" in model.bundle.generator.import_error
    reference = curvedit.load(trained, engine="onnxruntime")
    z = model.sample(4, seed=9)
    np.testing.assert_array_equal(model.generate(z), reference.generate(z))
    with pytest.raises(ValueError, match="training needs the generator's own package importable"), \
            torch.enable_grad():
        model.bundle.generator.decode(torch.zeros(1, 4, requires_grad=True))


def test_a_generator_that_cannot_be_exported_says_why_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "opaque.py").write_text(
        "import torch\n"
        "class Opaque(torch.nn.Module):\n"
        "    latent_dim = 2\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.scale = torch.nn.Parameter(torch.ones(1))\n"
        "    def forward(self, z):\n"
        "        # a branch on the data: an exported graph cannot hold it\n"
        "        level = torch.tanh(z) if float(z.detach().sum()) > 0 else -torch.tanh(z)\n"
        "        return (self.scale * level.mean(1))[:, None, None, None].expand(-1, 3, 8, 8).clamp(-1, 1)\n"
        "def make():\n"
        "    return Opaque()\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bundle"
    assert main(["train", "editor", "--generator", "opaque:make", "--out", str(out), "--method", "linear",
                 "--steps", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("onnx: generator.onnx")]
    assert len(lines) == 1 and "not exported" in lines[0] and "opaque importable" in lines[0]
    assert "generator.onnx" not in curvedit.load(out, engine="torch").bundle.manifest.get("onnx", {})
    sys.modules.pop("opaque", None)


@pytest.mark.parametrize(("argv", "message"), [
    (["--generator", "blobs"], "write it as 'package.module:callable'"),
    (["--generator", "no_such_module:make"], "cannot import 'no_such_module'"),
    (["--generator", "blobs:nothing"], "has no 'nothing'"),
    (["--generator", "blobs:make_regressor"], "no latent_dim attribute: pass --latent-dim"),
    (["--generator", "blobs:make_regressor", "--latent-dim", "4"], r"fails on latents \[2, 4\]"),
    (["--generator", "blobs:make_generator", "--mode", "supervised"], "needs --regressor"),
    (["--generator", "blobs:make_generator", "--directions", "9"], r"must be 1\.\.4"),
    (["--generator", "blobs:make_generator", "--model", "shapes32"], "does not apply"),
])
def test_bad_requests_are_one_clear_line(in_example, tmp_path, capsys, argv, message):
    code = main(["train", "editor", *argv, "--out", str(tmp_path / "b"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "b").exists(), "nothing is written for a refused request"
