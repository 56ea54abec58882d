"""The PixelCNN under ONNX Runtime: its step graphs are exported and verified like every graph, written into a
bundle instead of ``generator.onnx``, and the engine's loop over them draws the torch engine's images."""

import numpy as np
import pytest
import torch

import curvedit
from curvedit.bundle import write_bundle
from curvedit.export.graphs import bundle_specs
from curvedit.export.onnx_export import build_graph, export_bundle
from curvedit.models.labelled_editors import AxesEditor
from curvedit.models.pixelcnn import PixelCNN, PixelCNNConfig

TINY = PixelCNNConfig(channels=8, layers=3, kernel=3, head=16, encoder_channels=8, encoder_hidden=32)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    torch.manual_seed(0)
    path = write_bundle(tmp_path_factory.mktemp("pixelcnn") / "b", name="tiny-pixelcnn", version="0",
                        generator=PixelCNN(TINY).eval(),
                        editors={"axes": (AxesEditor(8, ["x", "y"], [0, 1]), "supervised", {})},
                        default_editor="axes")
    results = export_bundle(path, exporter="torchscript", only=["pixelcnn_rows.onnx", "pixelcnn_pixel.onnx"])
    assert [(r.filename, r.written) for r in results] == [("pixelcnn_rows.onnx", True),
                                                          ("pixelcnn_pixel.onnx", True)], results
    return path


def test_a_sampler_has_step_graphs_instead_of_a_generator_graph(bundle_path):
    files = [spec.filename for spec in bundle_specs(curvedit.load(bundle_path, engine="torch").bundle)]
    assert "generator.onnx" not in files and files[:2] == ["pixelcnn_rows.onnx", "pixelcnn_pixel.onnx"]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_each_step_graph_verifies_against_eager_at_other_batch_sizes(bundle_path, exporter):
    for spec in bundle_specs(curvedit.load(bundle_path, engine="torch").bundle)[:2]:
        graph = build_graph(spec, exporter)
        assert graph.check["batches"] == [1, 5] and graph.check["max_abs_err"] < 1e-4


def test_the_onnxruntime_engine_samples_the_torch_engines_images(bundle_path):
    torch_model, ort_model = curvedit.load(bundle_path, engine="torch"), curvedit.load(bundle_path,
                                                                                      engine="onnxruntime")
    z = torch_model.sample(6, seed=2)
    seeds = np.array([0, 1, 2, 3, 3, 9])
    images = ort_model.runtime.generate(z, seeds)
    assert ort_model.runtime.fallbacks() == {}
    assert set(ort_model.runtime.origins) == {"pixelcnn_rows", "pixelcnn_pixel"}
    assert (images == torch_model.runtime.generate(z, seeds)).all()
    assert (images == ort_model.runtime.generate(z[::-1].copy(), seeds[::-1].copy())[::-1]).all()
    assert (ort_model.generate(z) == torch_model.generate(z)).all()  # the default seed


def test_a_triton_repository_of_a_sampler_is_refused_with_the_fix(bundle_path, tmp_path):
    from curvedit.export.triton_repo import write_triton_repo

    with pytest.raises(ValueError, match="curvedit serve"):
        write_triton_repo(bundle_path, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("seed", [-1, 1.5, True, [0, 1], "7", 2**63])
def test_a_bad_seed_is_refused_naming_the_fix(bundle_path, seed):
    model = curvedit.load(bundle_path, engine="torch")
    with pytest.raises(curvedit.InputError, match="seed"):
        model.generate(model.sample(3, seed=0), seed=seed)


def test_a_seed_per_row_and_deterministic_generators_ignore_it(bundle_path):
    model = curvedit.load(bundle_path, engine="torch")
    z = model.sample(3, seed=0)
    per_row = model.generate(z, seed=[4, 5, 6])
    assert all((per_row[i] == model.generate(z[i : i + 1], seed=4 + i)[0]).all() for i in range(3))
    shapes32 = curvedit.load("shapes32", engine="torch")
    z = shapes32.sample(2, seed=0)
    assert not shapes32.samples and (shapes32.generate(z, seed=5) == shapes32.generate(z)).all()
