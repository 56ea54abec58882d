"""`curvedit export --triton-repo`: the layout Triton expects, configs that parse as Triton's own ModelConfig
(tritonclient ships its .proto), and ONNX graphs whose tensors match their configs and compute the edit."""

import subprocess
import sys

import numpy as np
import pytest

import curvedit
from curvedit.cli import main

onnx = pytest.importorskip("onnx")

PARSE = """
import json, sys
from pathlib import Path
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
out = {}
for config in sorted(Path(sys.argv[1]).glob("*/config.pbtxt")):
    parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
    out[config.parent.name] = json_format.MessageToDict(parsed)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def repo(tiny_vae_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    assert main(["export", "--model", str(tiny_vae_bundle), "--triton-repo", str(out), "--max-batch-size", "64",
                 "--exporter", "torchscript"]) == 0
    return out


@pytest.fixture(scope="module")
def configs(repo):
    """Every config.pbtxt parsed by protobuf as Triton's ModelConfig (in a process of its own: tritonclient's
    protocol stubs and curvedit's cannot share one)."""
    pytest.importorskip("tritonclient.http")
    import json

    done = subprocess.run([sys.executable, "-c", PARSE, str(repo)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_layout_is_a_model_repository(repo):
    found = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert found == ["tinyvae/config.pbtxt", "tinyvae_edit/1/model.onnx", "tinyvae_edit/config.pbtxt",
                     "tinyvae_encoder/1/model.onnx", "tinyvae_encoder/config.pbtxt",
                     "tinyvae_generator/1/model.onnx", "tinyvae_generator/config.pbtxt"]
    assert (repo / "tinyvae" / "1").is_dir()  # the ensemble's version folder


def test_configs_parse_as_triton_model_configs_with_dynamic_batching(configs):
    assert set(configs) == {"tinyvae", "tinyvae_edit", "tinyvae_encoder", "tinyvae_generator"}
    for name, config in configs.items():
        assert config["name"] == name and config["maxBatchSize"] == 64
        assert config["parameters"]["curvedit_bundle_version"] == {"stringValue": "0.0.1"}
    for name in ("tinyvae_edit", "tinyvae_encoder", "tinyvae_generator"):
        assert configs[name]["platform"] == "onnxruntime_onnx" and "dynamicBatching" in configs[name]
    edit = configs["tinyvae_edit"]
    assert [(t["name"], t["dataType"], t["dims"]) for t in edit["input"]] == [("z", "TYPE_FP32", ["8"]),
                                                                             ("t", "TYPE_FP32", ["4"])]
    ensemble = configs["tinyvae"]
    assert ensemble["platform"] == "ensemble"
    assert [t["name"] for t in ensemble["output"]] == ["z_edited", "images"]
    steps = ensemble["ensembleScheduling"]["step"]
    assert [s["modelName"] for s in steps] == ["tinyvae_edit", "tinyvae_generator"]
    assert steps[1]["inputMap"] == {"z": "z_edited"} and steps[1]["outputMap"] == {"image": "images"}


def test_each_graph_matches_its_config_and_computes_the_edit(repo, tiny_vae_bundle):
    import onnxruntime as ort

    kinds = {1: "TYPE_FP32", 2: "TYPE_UINT8"}
    for name in ("tinyvae_edit", "tinyvae_encoder", "tinyvae_generator"):
        graph = onnx.load(str(repo / name / "1" / "model.onnx")).graph
        text = (repo / name / "config.pbtxt").read_text()
        for value in [*graph.input, *graph.output]:
            head = f'name: "{value.name}"\n  data_type: {kinds[value.type.tensor_type.elem_type]}\n  dims: [ '
            assert head in text, f"{name}: {value.name} is not in its config with that type"
            configured = [int(d) for d in text.split(head)[1].split(" ]")[0].split(", ")]
            dims = value.type.tensor_type.shape.dim
            assert len(dims) == len(configured) + 1, f"{name}: {value.name} has another rank than its config"
            for d, want in zip(dims[1:], configured, strict=True):
                assert d.dim_value in (0, want), f"{name}: {value.name} has dims other than its config"
    model = curvedit.load(tiny_vae_bundle)
    z, t = model.sample(5, seed=1), np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    session = ort.InferenceSession(str(repo / "tinyvae_edit" / "1" / "model.onnx"))
    np.testing.assert_allclose(session.run(None, {"z": z, "t": t})[0], model.edit(z, t), rtol=1e-3, atol=1e-5)
