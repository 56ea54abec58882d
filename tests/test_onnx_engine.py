"""The ONNX Runtime engine: agrees with the torch engine, edits are invertible and commute, graphs come from the
bundle or an in-memory export, stale or failing graphs fall back correctly, and a CPU machine stays quiet."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from test_export import FrozenBatchEditor  # registers the test editor kinds

import curvedit
from curvedit.bundle import BundleError, add_editor, load_bundle
from curvedit.engines.onnx_engine import SMALL_BATCH_ROWS, OnnxEngine, OrtOptions, available_cores, resolve_device
from curvedit.export.onnx_export import export_bundle


@pytest.fixture(scope="module")
def exported_bundle(tiny_bundle, tmp_path_factory):
    path = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("ort") / "tiny")
    export_bundle(path, exporter="torchscript")
    return path


@pytest.fixture(scope="module", params=["bundle", "memory"])
def ort_model(request, tiny_bundle, exported_bundle):
    """The onnxruntime engine with graphs read from the bundle, or exported in memory (plain bundle)."""
    path = exported_bundle if request.param == "bundle" else tiny_bundle
    model = curvedit.load(path, engine="onnxruntime")
    model.edit(model.sample(1, seed=0), {"x": 0.0})
    model.edit(model.sample(SMALL_BATCH_ROWS, seed=0), {"x": 0.0})
    assert model._engine.origins == {"rows_edit:decurved": request.param, "edit:decurved": request.param}
    return model


@pytest.fixture(scope="module")
def torch_model(tiny_bundle):
    return curvedit.load(tiny_bundle, engine="torch")


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_edit_agrees_with_torch(ort_model, torch_model, batch):
    z = ort_model.sample(batch, seed=batch)
    amounts = np.random.default_rng(batch).normal(size=(batch, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_model.edit(z, amounts), torch_model.edit(z, amounts), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 5])
def test_generate_agrees_with_torch(ort_model, torch_model, batch):
    z = ort_model.sample(batch, seed=3)
    images = ort_model.generate(z)
    assert images.dtype == np.uint8 and images.shape == (batch, 32, 32, 3)
    assert np.abs(images.astype(int) - torch_model.generate(z).astype(int)).max() <= 1


@pytest.mark.parametrize("amount", [0.5, 2.0])
def test_minus_t_undoes_t(ort_model, amount):
    z = ort_model.sample(16, seed=1)
    edits = {"x": amount, "scale": -amount}
    back = ort_model.edit(ort_model.edit(z, edits), {k: -v for k, v in edits.items()})
    np.testing.assert_allclose(back, z, atol=1e-4)


def test_edits_commute(ort_model):
    z = ort_model.sample(16, seed=2)
    a, b = {"x": 1.0}, {"rotation": -0.7}
    ab = ort_model.edit(ort_model.edit(z, a), b)
    ba = ort_model.edit(ort_model.edit(z, b), a)
    both = ort_model.edit(z, {**a, **b})
    np.testing.assert_allclose(ab, ba, atol=1e-4)
    np.testing.assert_allclose(ab, both, atol=1e-4)


def test_model_reports_the_engine(ort_model):
    assert ort_model.engine == "onnxruntime"
    assert "engine='onnxruntime'" in repr(ort_model)


@pytest.mark.parametrize(("batch", "key"), [(4, "rows_edit:decurved"), (SMALL_BATCH_ROWS, "edit:decurved")])
def test_stale_graph_is_not_used(exported_bundle, tmp_path, tiny_bundle, batch, key):
    """New editor weights after export: the engine exports afresh instead of running the old graph."""
    path = shutil.copytree(exported_bundle, tmp_path / "stale")
    from conftest import randomize

    editor = randomize(load_bundle(tiny_bundle).editors["decurved"], seed=5)
    add_editor(path, "decurved", editor, mode="supervised")
    model = curvedit.load(path, engine="onnxruntime")
    z = model.sample(batch, seed=0)
    edited = model.edit(z, {"y": 1.0})
    assert model._engine.origins == {key: "memory"}  # a stale graph is not used
    np.testing.assert_allclose(edited, curvedit.load(path, engine="torch").edit(z, {"y": 1.0}),
                               rtol=1e-4, atol=1e-5)


def test_editor_without_a_graph_runs_on_torch(tiny_bundle, tmp_path):
    path = shutil.copytree(tiny_bundle, tmp_path / "frozen")
    add_editor(path, "frozen", FrozenBatchEditor(8, ["a", "b"]), mode="test")
    model = curvedit.load(path, engine="onnxruntime")
    z = model.sample(3, seed=0)
    edited = model.edit(z, {"a": 1.0}, editor="frozen")
    assert model._engine.origins["edit:frozen"].startswith("torch: ")
    np.testing.assert_allclose(edited, curvedit.load(path, engine="torch").edit(z, {"a": 1.0}, editor="frozen"))


@pytest.mark.parametrize(("filename", "batch"), [("edit.onnx", SMALL_BATCH_ROWS), ("rows_edit.onnx", 1)])
def test_graph_changed_after_load_is_refused(exported_bundle, tmp_path, filename, batch):
    path = shutil.copytree(exported_bundle, tmp_path / "tampered")
    model = curvedit.load(path, engine="onnxruntime")  # sessions are made on first use
    data = bytearray((path / filename).read_bytes())
    data[-3] ^= 0xFF
    (path / filename).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        model.edit(model.sample(batch, seed=0), {"x": 1.0})


def test_warm_up_builds_every_session(exported_bundle):
    engine = OnnxEngine(load_bundle(exported_bundle), "cpu")
    assert engine.warm_up() == {"generator": "bundle", "edit:decurved": "bundle", "rows_edit:decurved": "bundle"}
    assert engine.providers == ["CPUExecutionProvider"]


def test_session_options_fit_the_machine():
    options = OrtOptions().session_options()
    assert options.intra_op_num_threads == available_cores()
    assert options.inter_op_num_threads == 1
    assert options.log_severity_level == 3


@pytest.mark.parametrize(("kwargs", "message"), [({"threads": 0}, "threads must be >= 1"),
                                                 ({"optimization": "max"}, "optimization must be")])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OrtOptions(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cuda_device_without_gpu_is_refused():
    assert resolve_device(None) == "cpu"
    with pytest.raises(ValueError, match="CUDAExecutionProvider"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'cpu' or 'cuda"):
        resolve_device("mps")


def test_no_provider_noise_in_process(tiny_bundle, capfd):
    model = curvedit.load(tiny_bundle, engine="onnxruntime")
    z = model.sample(2, seed=0)
    model.edit(z, {"x": 1.0})
    model.generate(z)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_no_provider_noise_in_a_fresh_process(tiny_bundle):
    """onnxruntime-gpu warns on stderr when asked for CUDA without a GPU; a fresh process sees every line."""
    script = textwrap.dedent(f"""
        import curvedit
        model = curvedit.load({str(tiny_bundle)!r}, engine="auto")
        z = model.sample(2, seed=0)
        model.edit(z, {{"x": 1.0}}); model.generate(z)
        print(model.engine)
    """)
    # A user's process: without the TRITON_INTERPRET=1 that conftest and `make test` set (under it a GPU host's
    # auto choice is not triton).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    expected = "triton" if torch.cuda.is_available() else "onnxruntime"
    assert done.stdout == f"{expected}\n" and done.stderr == ""


@pytest.mark.parametrize("batch", [5, SMALL_BATCH_ROWS])
def test_graph_of_a_former_default_editor_is_not_used_for_the_new_default(tiny_bundle, tmp_path, batch):
    """``edit.onnx`` follows the default editor: after the default changes, the old file (made for another
    editor) must not serve the new default — the engine builds the right graph instead."""
    from conftest import randomize

    from curvedit.models.editors import DeCurvEd

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    export_bundle(bundle, exporter="torchscript")
    second = randomize(DeCurvEd(8, ["x", "y", "scale", "rotation"], hidden=16, layers=4), seed=9).eval()
    add_editor(bundle, "second", second, "supervised", make_default=True)
    ort_model = curvedit.load(bundle, engine="onnxruntime")
    torch_model = curvedit.load(bundle, engine="torch")
    z = torch_model.sample(batch, seed=0)
    for editor in ("second", "decurved"):
        np.testing.assert_allclose(ort_model.edit(z, {"x": 1.0}, editor=editor),
                                   torch_model.edit(z, {"x": 1.0}, editor=editor), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("batch", "key"), [
    (1, "rows_edit:decurved"), (SMALL_BATCH_ROWS - 1, "rows_edit:decurved"),
    (SMALL_BATCH_ROWS, "edit:decurved"), (100, "edit:decurved"),
])
def test_small_cpu_batches_run_on_the_batch_major_graph(exported_bundle, torch_model, batch, key):
    engine = OnnxEngine(load_bundle(exported_bundle), "cpu")
    assert engine.edit_key("decurved", batch) == key
    z = torch_model.sample(batch, seed=batch)
    amounts = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
    np.testing.assert_allclose(engine.edit("decurved", z, amounts), torch_model.edit(z, amounts),
                               rtol=1e-4, atol=1e-5)
    assert set(engine.origins) == {key} and engine.origins[key] == "bundle"


def test_a_bundle_exported_before_the_batch_major_twin_keeps_using_its_graph(tiny_bundle, tmp_path):
    """A bundle with a fresh ``edit.onnx`` but no ``rows_edit.onnx``: small batches run on the shipped graph
    instead of exporting the twin at serve time."""
    path = shutil.copytree(tiny_bundle, tmp_path / "older")
    export_bundle(path, exporter="torchscript", only=["edit.onnx"])
    engine = OnnxEngine(load_bundle(path), "cpu")
    assert engine.edit_key("decurved", 1) == "edit:decurved"
    z = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    amounts = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(engine.edit("decurved", z, amounts),
                               curvedit.load(path, engine="torch").edit(z, amounts), rtol=1e-4, atol=1e-5)
    assert engine.origins == {"edit:decurved": "bundle"}
