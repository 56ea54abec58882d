"""The feature-major flow written for export computes the same edit as the editor, and the ONNX Runtime
engine's chunking of large CPU batches changes nothing but speed."""

import numpy as np
import pytest
import torch
from conftest import randomize
from numerics import EPS, assert_within, edit_bound, flow_bound

import curvedit
from curvedit.engines.onnx_engine import CPU_CHUNK_ROWS
from curvedit.export.feature_major import BatchMajorEdit, FeatureMajorDecode, FeatureMajorEdit, FeatureMajorEncode
from curvedit.models.editors import DeCurvEd


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "mixing"])
def editor(request):
    return randomize(DeCurvEd(11, ["a", "b", "c"], hidden=20, layers=5, mixing=request.param), std=0.2,
                     seed=3).eval()


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_feature_major_matches_the_editor(editor, batch):
    gen = torch.Generator().manual_seed(batch)
    z, t = torch.randn(batch, 11, generator=gen), torch.randn(batch, 3, generator=gen)
    eps = EPS[torch.float32]
    # Two float32 computations of the same map: each within its rounding bound of the exact one (numerics.py).
    encode_bound, decode_bound = flow_bound(editor.flow, z, eps)[1], flow_bound(editor.flow, z, eps, True)[1]
    edit_error = edit_bound(editor, z, t, eps)[1]
    with torch.no_grad():
        assert_within(FeatureMajorEncode(editor)(z), editor.encode(z), 2 * encode_bound, "encode")
        assert_within(FeatureMajorDecode(editor)(z), editor.decode(z), 2 * decode_bound, "decode")
        assert_within(FeatureMajorEdit(editor)(z, t), editor.edit(z, t), 2 * edit_error, "edit")
        assert_within(BatchMajorEdit(editor)(z, t), editor.edit(z, t), 2 * edit_error, "batch-major edit")


class RecordingSession:
    """Wraps a real ONNX Runtime session and records the rows of every call it runs."""

    def __init__(self, session):
        self.session, self.rows = session, []

    def run(self, outputs, feeds):
        self.rows.append(len(feeds["z"]))
        return self.session.run(outputs, feeds)


@pytest.mark.parametrize(("n", "calls"), [
    (CPU_CHUNK_ROWS, [CPU_CHUNK_ROWS]),  # one chunk: one call
    (CPU_CHUNK_ROWS + 1, [CPU_CHUNK_ROWS, 1]),
    (2 * CPU_CHUNK_ROWS + 3, [CPU_CHUNK_ROWS, CPU_CHUNK_ROWS, 3]),  # two full chunks and a ragged one
])
def test_large_cpu_batches_run_in_chunks_with_the_same_result(tiny_bundle, monkeypatch, n, calls):
    model = curvedit.load(tiny_bundle, engine="onnxruntime", device="cpu")
    engine = model._engine
    key = engine.edit_key("decurved", n)
    recording = RecordingSession(engine.session(key))
    monkeypatch.setitem(engine._sessions, key, recording)
    z = model.sample(n, seed=0)
    amounts = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    edited = model.edit(z, amounts)
    assert recording.rows == calls
    reference = curvedit.load(tiny_bundle, engine="torch", device="cpu")
    editor = reference.bundle.editors["decurved"]
    bound = edit_bound(editor, torch.from_numpy(z), torch.from_numpy(amounts), EPS[torch.float32])[1]
    assert_within(edited, reference.edit(z, amounts), 2 * bound, "chunked ONNX Runtime edit")
