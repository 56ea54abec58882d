"""ONNX export: every graph agrees with eager PyTorch on new batch sizes, is listed with its checksum and opset,
is refused when tampered with, and is not written at all when it fails verification."""

import re
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import curvedit
from curvedit.bundle import BundleError, add_editor, add_file, load_bundle, read_manifest
from curvedit.cli import main
from curvedit.export import onnx_export
from curvedit.export.external_weights import MIN_BYTES, tensor_spans
from curvedit.export.graphs import bundle_specs
from curvedit.export.onnx_export import OPSET, export_bundle, relink_bundle
from curvedit.models.editors import Editor, register_editor
from curvedit.models.files import sha256_file, to_uint8
from curvedit.synthetic import make_synthetic_bundle

GRAPHS = ("generator.onnx", "flow_forward.onnx", "flow_inverse.onnx", "edit.onnx", "rows_edit.onnx")
EDIT_GRAPHS = ("edit.onnx", "rows_edit.onnx")


@register_editor
class FrozenBatchEditor(Editor):
    """A linear editor whose step size depends on the batch size through a Python int. A tracer freezes that
    int at the export batch, so the exported graph is wrong at every other batch size: verification must
    catch it (torch.export specialises the batch axis instead, and the graph refuses other batch sizes)."""

    kind = "test-frozen-batch"
    needs_training = False

    def __init__(self, latent_dim: int, directions: list[str]):
        super().__init__(latent_dim, directions)
        self.basis = torch.nn.Parameter(torch.eye(latent_dim)[: len(directions)].clone())

    def edit(self, z, amounts):
        return z + (amounts @ self.basis) * float(int(z.shape[0]))


@register_editor
class LinearTestEditor(Editor):
    """z' = z + t·A with a random A: a traceable editor of another kind."""

    kind = "test-linear"
    needs_training = False

    def __init__(self, latent_dim: int, directions: list[str]):
        super().__init__(latent_dim, directions)
        self.basis = torch.nn.Parameter(torch.randn(len(directions), latent_dim))

    def edit(self, z, amounts):
        return z + amounts @ self.basis


def copy_bundle(source, tmp_path, name="bundle"):
    return shutil.copytree(source, tmp_path / name)


@pytest.fixture(scope="module")
def exported(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with every graph exported (TorchScript exporter: fast), plus the results."""
    path = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("export") / "tiny")
    return path, export_bundle(path, exporter="torchscript")


def run_graph(path, filename, *inputs):
    session = ort.InferenceSession(str(path / filename), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})[0]


def eager(bundle, filename, *inputs):
    editor = bundle.editors["decurved"]
    with torch.inference_mode():
        if filename == "generator.onnx":
            return to_uint8(bundle.generator(inputs[0]))
        fn = {"flow_forward.onnx": editor.encode, "flow_inverse.onnx": editor.decode, "edit.onnx": editor.edit,
              "rows_edit.onnx": editor.edit}
        return fn[filename](*inputs).numpy()


def test_every_graph_is_written(exported):
    _, results = exported
    assert [r.filename for r in results if r.written] == list(GRAPHS)
    assert all(r.reason == "" for r in results)


@pytest.mark.parametrize("batch", [3, 11])
@pytest.mark.parametrize("filename", GRAPHS)
def test_graph_matches_eager_on_other_batch_sizes(exported, filename, batch):
    path, _ = exported
    bundle = load_bundle(path)
    gen = torch.Generator().manual_seed(batch)
    inputs = [torch.randn(batch, 8, generator=gen)]
    if filename in EDIT_GRAPHS:
        inputs.append(torch.randn(batch, 4, generator=gen))
    actual, expected = run_graph(path, filename, *inputs), eager(bundle, filename, *inputs)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if filename == "generator.onnx":  # uint8 NHWC, like Model.generate; a value on a rounding edge may flip
        assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("filename", GRAPHS)
def test_manifest_lists_checksum_opset_and_ports(exported, filename):
    path, _ = exported
    manifest = read_manifest(path)
    assert manifest["files"][filename] == sha256_file(path / filename)
    entry = manifest["onnx"][filename]
    assert entry["opset"] == OPSET
    assert entry["inputs"][0] == {"name": "z" if filename != "flow_inverse.onnx" else "v",
                                  "shape": ["batch", 8], "dtype": "float32"}
    assert entry["editor"] == (None if filename == "generator.onnx" else "decurved")
    assert entry["verified"]["batches"] and entry["verified"]["max_abs_err"] < 1e-4
    assert set(entry["sources"]) <= set(manifest["files"])


@pytest.mark.parametrize("filename", GRAPHS)
def test_graphs_store_no_weight_the_bundle_already_holds(exported, filename):
    """Every initializer the safetensors files hold byte for byte points into them (ONNX external data), and the
    manifest lists the files each graph reads; no side files (*.data) are written."""
    path, _ = exported
    assert not list(path.glob("*.data")) and not list(path.glob("*.onnx.*"))
    manifest = read_manifest(path)
    files = {name: (path / name).read_bytes() for name in manifest["files"] if name.endswith(".safetensors")}
    spans = {name: tensor_spans(data) for name, data in files.items()}
    model = onnx.load(str(path / filename), load_external_data=False)
    pointed = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = {e.key: e.value for e in tensor.external_data}
            offset, length = int(where["offset"]), int(where["length"])
            assert (offset, length) in spans[where["location"]].values()
            pointed.add(where["location"])
        else:
            raw = onnx.numpy_helper.to_array(tensor).tobytes()
            assert len(raw) < MIN_BYTES or not any(raw in found for found in spans.values()), tensor.name
    assert pointed and sorted(pointed) == manifest["onnx"][filename]["weights"]


def test_a_graph_refuses_a_weight_file_changed_after_load(exported, tmp_path):
    """The engine reads the graph and the weight files it points into again, checked, as it builds the session."""
    path = copy_bundle(exported[0], tmp_path)
    model = curvedit.load(path, engine="onnxruntime")
    data = bytearray((path / "editor_decurved.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (path / "editor_decurved.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for .*editor_decurved\.safetensors"):
        model.edit(model.sample(2, seed=0), {"x": 1.0})


def test_relinking_a_self_contained_graph_keeps_its_outputs_bit_for_bit(tiny_bundle, tmp_path):
    """A bundle exported before graphs pointed into its weights (every weight inline) is rewritten in place."""
    path = copy_bundle(tiny_bundle, tmp_path)
    (spec,) = [s for s in bundle_specs(load_bundle(path)) if s.filename == "edit.onnx"]
    graph = onnx_export.build_graph(spec, "torchscript")
    (path / "edit.onnx").write_bytes(graph.data)  # the old layout: everything inline
    add_file(path, "edit.onnx", section="onnx", entry=graph.entry())
    z, t = torch.randn(5, 8), torch.randn(5, 4)
    before = run_graph(path, "edit.onnx", z, t)
    (result,) = relink_bundle(path)
    assert result.written and result.size < len(graph.data)  # the tiny flow: most tensors are under MIN_BYTES
    assert read_manifest(path)["onnx"]["edit.onnx"]["weights"] == ["editor_decurved.safetensors"]
    assert np.array_equal(run_graph(path, "edit.onnx", z, t), before)


def test_tampered_graph_is_refused_at_load(exported, tmp_path):
    path = copy_bundle(exported[0], tmp_path)
    data = bytearray((path / "edit.onnx").read_bytes())
    data[-5] ^= 0xFF
    (path / "edit.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for .*edit\.onnx"):
        load_bundle(path)


@pytest.mark.parametrize(("exporter", "reason"), [
    # The tracer freezes the step size into a graph that still takes any batch: wrong values at other batches ...
    ("torchscript", r"^edit_frozen\.onnx: ONNX Runtime disagrees with eager PyTorch at batch \d+"),
    # ... torch.export specialises the batch axis itself, and ONNX Runtime refuses the other batch sizes.
    ("dynamo", r"^edit_frozen\.onnx: ONNX Runtime fails at batch \d+: .*invalid dimensions for input: z"),
])
def test_graph_that_fails_verification_is_not_written(tiny_bundle, tmp_path, exporter, reason):
    path = copy_bundle(tiny_bundle, tmp_path)
    add_editor(path, "frozen", FrozenBatchEditor(8, ["a", "b"]), mode="test")
    results = {r.filename: r for r in export_bundle(path, exporter=exporter, only=["edit_frozen.onnx"])}
    assert not results["edit_frozen.onnx"].written
    assert re.search(reason, results["edit_frozen.onnx"].reason), results["edit_frozen.onnx"].reason
    manifest = read_manifest(path)
    assert "edit_frozen.onnx" not in manifest.get("onnx", {}) and "edit_frozen.onnx" not in manifest["files"]
    assert not (path / "edit_frozen.onnx").exists()


def test_other_editors_get_their_own_graph(tiny_bundle, tmp_path):
    path = copy_bundle(tiny_bundle, tmp_path)
    editor = LinearTestEditor(8, ["a", "b", "c"])
    add_editor(path, "linear", editor, mode="test")
    results = export_bundle(path, exporter="torchscript", only=["edit_linear.onnx"])
    assert [r.written for r in results] == [True]
    assert read_manifest(path)["onnx"]["edit_linear.onnx"]["editor"] == "linear"
    z, t = torch.randn(6, 8), torch.randn(6, 3)
    with torch.inference_mode():
        expected = editor.edit(z, t).numpy()
    np.testing.assert_allclose(run_graph(path, "edit_linear.onnx", z, t), expected, rtol=1e-4, atol=1e-5)


def test_reexport_that_now_fails_removes_the_old_graph(exported, tmp_path, monkeypatch):
    path = copy_bundle(exported[0], tmp_path)
    real = onnx_export.reference
    monkeypatch.setattr(onnx_export, "reference", lambda spec, inputs: real(spec, inputs) + 1e-2)
    results = export_bundle(path, exporter="torchscript", only=["edit.onnx"])
    assert [r.written for r in results] == [False] and "disagrees" in results[0].reason
    manifest = read_manifest(path)
    assert "edit.onnx" not in manifest["onnx"] and "edit.onnx" not in manifest["files"]
    assert not (path / "edit.onnx").exists()
    assert "generator.onnx" in manifest["onnx"]
    load_bundle(path)  # still a consistent bundle


def test_dynamo_exporter_writes_a_clean_edit_graph(tiny_bundle, tmp_path):
    path = copy_bundle(tiny_bundle, tmp_path)
    results = export_bundle(path, exporter="dynamo", only=["edit.onnx"])
    assert [r.written for r in results] == [True]
    model = onnx.load(str(path / "edit.onnx"))
    assert read_manifest(path)["onnx"]["edit.onnx"]["exporter"] == "dynamo"
    assert all(len(node.metadata_props) == 0 for node in model.graph.node)  # no source paths shipped
    assert "Gather" in {node.op_type for node in model.graph.node}  # index_select, not GatherND
    assert "GatherND" not in {node.op_type for node in model.graph.node}


def test_synthetic_bundle_exports_and_verifies(tmp_path):
    path = make_synthetic_bundle(tmp_path / "synthetic", latent_dim=32, hidden=32, layers=3, directions=4)
    results = export_bundle(path, exporter="torchscript")
    assert [r.filename for r in results if r.written] == list(GRAPHS)
    bundle = load_bundle(path)
    gen = torch.Generator().manual_seed(7)
    z, t = torch.randn(9, 32, generator=gen), torch.randn(9, 4, generator=gen)
    np.testing.assert_allclose(run_graph(path, "edit.onnx", z, t), eager(bundle, "edit.onnx", z, t),
                               rtol=1e-4, atol=1e-5)


def test_specs_cover_every_editor(tiny_bundle, tmp_path):
    path = copy_bundle(tiny_bundle, tmp_path)
    add_editor(path, "frozen", FrozenBatchEditor(8, ["a"]), mode="test")
    assert [s.filename for s in bundle_specs(load_bundle(path))] == [*GRAPHS, "edit_frozen.onnx"]


def test_cli_export_writes_into_a_copy(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--model", str(tiny_bundle), "--out", str(out), "--exporter", "torchscript"]) == 0
    assert "5 of 5 graphs verified" in capsys.readouterr().out
    assert all((out / name).is_file() for name in GRAPHS)
    assert set(GRAPHS) <= set(read_manifest(out)["onnx"])
    assert "onnx" not in read_manifest(tiny_bundle)  # the source bundle is untouched
    load_bundle(out)


def test_cli_export_defaults_to_the_shipped_bundle(tiny_bundle, tmp_path, monkeypatch, capsys):
    import curvedit.api

    monkeypatch.setattr(curvedit.api, "default_bundle_path", lambda: tiny_bundle)
    assert main(["export", "--out", str(tmp_path / "out"), "--exporter", "torchscript"]) == 0
    assert (tmp_path / "out" / "edit.onnx").is_file()


def test_cli_export_refuses_a_non_empty_out(tiny_bundle, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    assert main(["export", "--model", str(tiny_bundle), "--out", str(tmp_path / "out")]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_cli_export_refuses_a_non_bundle(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
