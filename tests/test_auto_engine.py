"""The auto engine: routes each operation and batch bucket to the backend measured fastest, says which won in
ModelInfo and /metrics; engine fallbacks are visible the same way. Fake backends make the measured difference
large (50 ms), so the routing decision cannot flip under load; nothing here asserts a time."""

import shutil
import time

import numpy as np
import pytest
from service_util import metric
from test_export import FrozenBatchEditor  # registers the test editor kinds

import curvedit
from curvedit.bundle import add_editor, load_bundle
from curvedit.client import Client
from curvedit.engines import make_engine
from curvedit.engines.auto_engine import AutoEngine, choose
from curvedit.engines.base import ShapePolicy
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig


class Fake:
    """A backend that is slow (50 ms) at the batch sizes given, instant elsewhere; records who ran what."""

    shape_policy = ShapePolicy()

    def __init__(self, name: str, slow_at, calls: list):
        self.name, self.slow_at, self.calls = name, set(slow_at), calls

    def edit(self, editor, z, amounts):
        if len(z) in self.slow_at:
            time.sleep(0.05)
        self.calls.append((self.name, len(z)))
        return z + 1

    def generate(self, z):
        return np.zeros((len(z), 2, 2, 3), np.uint8)

    def fallbacks(self):
        return {"edit:x": "torch: a reason"} if self.name == "torch" else {}


@pytest.fixture
def fakes(tiny_bundle):
    calls = []
    engines = {"onnxruntime": Fake("onnxruntime", {1, 2}, calls), "torch": Fake("torch", {4, 8}, calls)}
    auto = AutoEngine(load_bundle(tiny_bundle), "cpu", "onnxruntime", ["onnxruntime", "torch"],
                      lambda name, _options: engines[name])
    return auto, calls


def test_before_calibration_everything_runs_on_the_default(fakes):
    auto, calls = fakes
    auto.edit("decurved", np.zeros((4, 8), np.float32), np.zeros((4, 4), np.float32))
    assert calls == [("onnxruntime", 4)] and auto.name == "onnxruntime" and auto.routes() == []


def test_each_bucket_goes_to_the_backend_that_was_fastest_there(fakes):
    auto, calls = fakes
    routes = auto.calibrate([1, 2, 4, 8], ["edit:decurved"], repeats=3, warmup=1)
    assert [(r.bucket, r.backend) for r in routes] == [(1, "torch"), (2, "torch"), (4, "onnxruntime"),
                                                       (8, "onnxruntime")]
    assert auto.name == "auto"  # more than one backend won
    calls.clear()
    for n in (1, 2, 3, 5, 20):  # 3 → bucket 4, 5 → 8, 20 → beyond the largest: the largest's route
        auto.edit("decurved", np.zeros((n, 8), np.float32), np.zeros((n, 4), np.float32))
    assert calls == [("torch", 1), ("torch", 2), ("onnxruntime", 3), ("onnxruntime", 5), ("onnxruntime", 20)]
    assert auto.fallbacks() == {"torch/edit:x": "torch: a reason"}  # only backends some route uses


def test_a_backend_that_cannot_run_is_left_out(tiny_bundle):
    class Broken(Fake):
        def edit(self, editor, z, amounts):
            raise RuntimeError("no such kernel")

    calls = []
    engines = {"onnxruntime": Fake("onnxruntime", set(), calls), "torch": Broken("torch", set(), calls)}
    auto = AutoEngine(load_bundle(tiny_bundle), "cpu", "torch", ["onnxruntime"], lambda n, _o: engines[n])
    assert {r.backend for r in auto.calibrate([1, 4], ["edit:decurved"], repeats=2)} == {"onnxruntime"}


def test_unknown_candidates_are_refused(tiny_bundle):
    with pytest.raises(ValueError, match="candidates must be among"):
        make_engine(load_bundle(tiny_bundle), "auto", "cpu", {"candidates": ["tensorrt"]})


def test_the_real_auto_engine_routes_to_real_backends_that_agree(tiny_bundle):
    model = curvedit.load(tiny_bundle, engine="auto")
    routes = model.runtime.calibrate([1, 4], repeats=2)
    assert {(r.operation, r.bucket) for r in routes} == {(op, b) for op in ("edit:decurved", "generate")
                                                         for b in (1, 4)}
    assert {r.backend for r in routes} <= {"onnxruntime", "torch"} and all(r.seconds > 0 for r in routes)
    z = model.sample(4, seed=3)
    reference = curvedit.load(tiny_bundle, engine="torch")
    np.testing.assert_allclose(model.edit(z, {"x": 1.0}), reference.edit(z, {"x": 1.0}), atol=1e-5)


@pytest.mark.in_process
def test_modelinfo_and_metrics_say_which_backend_won_and_what_falls_back(tiny_bundle, tmp_path):
    path = shutil.copytree(tiny_bundle, tmp_path / "frozen")
    add_editor(path, "frozen", FrozenBatchEditor(8, ["a", "b"]), mode="test")  # no ONNX graph: runs on torch
    config = ServeConfig(port=0, http_port=-1, metrics_port=0, models=(str(path),), max_batch_size=4,
                         engine="auto")
    with BackgroundServer(config) as bg, Client(f"127.0.0.1:{bg.port}") as client:
        info = client.get_model("tiny")
        port = bg.server.metrics_port
        routes = {(r.operation, r.bucket): r.backend for r in info.routes}
        assert set(routes) == {(op, b) for op in ("edit:decurved", "edit:frozen", "generate") for b in (1, 2, 4)}
        for (operation, bucket), backend in routes.items():
            assert metric(port, "curvedit_engine_route_seconds", operation=operation, bucket=str(bucket),
                          backend=backend) > 0
        if routes[("edit:frozen", 4)] == "onnxruntime":  # its graph falls back to torch inside ONNX Runtime
            assert any(f.part == "onnxruntime/edit:frozen" and f.reason.startswith("torch: ")
                       for f in info.fallbacks)
    ort = ServeConfig(port=0, http_port=-1, metrics_port=0, models=(str(path),), engine="onnxruntime")
    with BackgroundServer(ort) as bg, Client(f"127.0.0.1:{bg.port}") as client:
        (fallback,) = client.get_model("tiny").fallbacks
        assert fallback.part == "edit:frozen" and fallback.reason.startswith("torch: ")
        assert metric(bg.server.metrics_port, "curvedit_engine_fallback", part="edit:frozen", path="torch") == 1
        assert list(client.get_model("tiny").routes) == []


def test_a_bucket_leaves_the_default_only_for_a_clear_win():
    # Within the margin the default keeps the bucket (a near tie is noise; mixed backends cost in the tail).
    assert choose({"onnxruntime": 1.00, "torch": 0.97}, "onnxruntime") == "onnxruntime"
    assert choose({"onnxruntime": 1.00, "torch": 0.90}, "onnxruntime") == "torch"
    assert choose({"onnxruntime": 1.00, "torch": 0.97}, "onnxruntime", margin=0.0) == "torch"
    assert choose({"torch": 0.5, "triton": 0.1}, "onnxruntime") == "triton"  # the default could not run


def test_a_samplers_generate_is_timed_once_per_candidate_and_bucket(tmp_path):
    """256 network passes per image: seven calls per candidate made a PixelCNN server's warm-up take minutes."""
    import torch

    from curvedit.bundle import write_bundle
    from curvedit.models.labelled_editors import AxesEditor
    from curvedit.models.pixelcnn import PixelCNN, PixelCNNConfig

    class Counting(Fake):
        def generate(self, z, seeds=None, check=None):
            self.calls.append((f"{self.name} generate", len(z)))
            return np.zeros((len(z), 16, 16, 3), np.uint8)

    torch.manual_seed(0)
    config = PixelCNNConfig(channels=8, layers=2, kernel=3, head=16, encoder_channels=8, encoder_hidden=32)
    path = write_bundle(tmp_path / "b", name="tiny-pixelcnn", version="0", generator=PixelCNN(config).eval(),
                        editors={"axes": (AxesEditor(8, ["x"], [0]), "supervised", {})}, default_editor="axes")
    calls = []
    engines = {"onnxruntime": Counting("onnxruntime", set(), calls), "torch": Counting("torch", set(), calls)}
    auto = AutoEngine(load_bundle(path), "cpu", "onnxruntime", ["onnxruntime", "torch"], lambda n, _o: engines[n])
    auto.calibrate([1, 4], ["generate", "edit:axes"], repeats=3, warmup=1)
    generated = sorted(c for c in calls if c[0].endswith("generate"))
    assert generated == [("onnxruntime generate", 1), ("onnxruntime generate", 4), ("torch generate", 1),
                         ("torch generate", 4)]  # once per candidate and bucket
    # Edits keep their warm-up and repeats: (1 warm-up + 2 rounds × 1 untimed + 3 timed) × 2 candidates × 2
    # buckets, each candidate's calls consecutive within a round (alternated call by call, spinning pools skew
    # the times).
    edits = [c for c in calls if not c[0].endswith("generate")]
    assert len(edits) == 24
    at_one = [name.split()[0] for name, n in edits if n == 1]
    assert at_one == ["onnxruntime", "torch"] + ["onnxruntime"] * 3 + ["torch"] * 3 + ["onnxruntime"] * 2 + [
        "torch"] * 2
