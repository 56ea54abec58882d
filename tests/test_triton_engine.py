"""TritonEngine against the reference TorchEngine: on the CPU through the interpreter (fp32, fp16), on a GPU with
bf16 and CUDA graphs (marked ``gpu``, skipped without CUDA)."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from numerics import EPS, assert_within, edit_bound

from curvedit.bundle import load_bundle
from curvedit.engines.torch_engine import TorchEngine
from curvedit.engines.triton_engine import TritonEngine, triton_available
from curvedit.models.editors import Editor

needs_kernels = pytest.mark.skipif(not triton_available("cpu"), reason="needs TRITON_INTERPRET=1 (conftest)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


def rounding(bundle, z, t):
    """Each float32 engine's rounding bound of the exact edit (numerics.edit_bound); two engines agree to 2×."""
    return edit_bound(bundle.editors["decurved"], torch.from_numpy(z), torch.from_numpy(t), EPS[torch.float32])[1]


def latents(batch: int, dim: int, directions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, dim), dtype=np.float32)
    return z, rng.uniform(-3, 3, (batch, directions)).astype(np.float32)


@needs_kernels
@pytest.mark.parametrize("batch", [1, 5, 16])
def test_edit_matches_torch_engine(bundle, batch):
    z, t = latents(batch, 8, 4, seed=batch)
    expected = TorchEngine(bundle).edit("decurved", z, t)
    got = TritonEngine(bundle, device="cpu").edit("decurved", z, t)
    assert got.dtype == np.float32 and got.shape == (batch, 8)
    assert_within(got, expected, 2 * rounding(bundle, z, t), "triton edit")


@needs_kernels
def test_fp16_edit_is_close_and_invertible(bundle):
    engine = TritonEngine(bundle, device="cpu", precision="fp16")
    z, t = latents(7, 8, 4)
    edited = engine.edit("decurved", z, t)
    np.testing.assert_allclose(edited, TorchEngine(bundle).edit("decurved", z, t), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(engine.edit("decurved", edited, -t), z, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_edit_tensor_stays_a_tensor(bundle):
    engine = TritonEngine(bundle, device="cpu")
    z, t = latents(3, 8, 4)
    out = engine.edit_tensor("decurved", torch.from_numpy(z), torch.from_numpy(t))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 8)
    np.testing.assert_allclose(out.numpy(), engine.edit("decurved", z, t), rtol=0, atol=0)


@needs_kernels
def test_concurrent_calls_share_buffers_safely(bundle):
    """Calls of one bucket share the plan's buffers; the engine serialises them, so threads get their own rows."""
    engine, reference = TritonEngine(bundle, device="cpu"), TorchEngine(bundle)
    cases = [latents(3, 8, 4, seed=seed) for seed in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: engine.edit("decurved", *case), cases))
    for (z, t), got in zip(cases, results, strict=True):
        np.testing.assert_allclose(got, reference.edit("decurved", z, t), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_generate_matches_torch_engine(bundle):
    z, _ = latents(2, 8, 4)
    images = TritonEngine(bundle, device="cpu").generate(z)
    assert images.dtype == np.uint8 and images.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(images, TorchEngine(bundle).generate(z))


class ShiftEditor(Editor):
    """A non-flow editor: ``z + pad(amounts)``; the engine has no kernel for it."""

    kind = "test-shift"

    def edit(self, z, amounts):
        return z + torch.nn.functional.pad(amounts, (0, self.latent_dim - amounts.shape[1]))


@needs_kernels
def test_other_editor_kinds_fall_back_to_torch(bundle):
    """Only DeCurvEd flows have kernels; any other editor runs on its own torch module."""
    mixed = dataclasses.replace(bundle, editors={**bundle.editors, "shift": ShiftEditor(8, ["a", "b"])})
    engine = TritonEngine(mixed, device="cpu")
    assert set(engine.packed) == {"decurved"}
    z, t = latents(4, 8, 2)
    np.testing.assert_array_equal(engine.edit("shift", z, t), z + np.pad(t, ((0, 0), (0, 6))))


@needs_kernels
def test_rejects_an_unknown_editor(bundle):
    with pytest.raises(ValueError, match=r"unknown editor 'nope'; this bundle has \['decurved'\]"):
        TritonEngine(bundle, device="cpu").edit("nope", *latents(1, 8, 4))


@needs_kernels
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"precision": "fp8"}, r"unknown MLP precision 'fp8'"),
    ({"precision": "bf16"}, r"bf16 does not work under TRITON_INTERPRET=1"),
    ({"use_cuda_graphs": True}, r"use_cuda_graphs needs a CUDA device, got cpu"),
], ids=["fp8", "bf16-on-the-interpreter", "cuda-graphs-on-the-cpu"])
def test_rejects_settings_the_device_cannot_run(bundle, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TritonEngine(bundle, device="cpu", **kwargs)


@needs_kernels
@pytest.mark.parametrize("batch", [1, 5, 16, 17])
def test_column_buckets_match_torch_engine(bundle, batch):
    """Buckets up to 16 rows run the column-parallel kernels, larger ones the fused kernel: both agree."""
    z, t = latents(batch, 8, 4, seed=batch)
    engine = TritonEngine(bundle, device="cpu", column_buckets_up_to=16)
    assert_within(engine.edit("decurved", z, t), TorchEngine(bundle).edit("decurved", z, t),
                  2 * rounding(bundle, z, t), "column-parallel edit")
    (plan, _), = engine._plans.values()
    assert type(plan).__name__ == ("ColumnEditPlan" if batch <= 16 else "EditPlan")


@needs_kernels
@pytest.mark.parametrize(("dim", "hidden", "expected"), [(8, 16, 0), (8, 256, 1024), (512, 64, 1024)])
def test_column_buckets_default_to_what_the_gpu_run_measured(tmp_path, dim, hidden, expected):
    """By default only wide flows (d or h >= 256) run their buckets up to 1,024 rows on the column kernels."""
    from curvedit.synthetic import make_synthetic_bundle

    path = make_synthetic_bundle(tmp_path / "b", latent_dim=dim, hidden=hidden, layers=1, directions=2)
    engine = TritonEngine(load_bundle(path), device="cpu")
    assert engine.columns_up_to("decurved") == expected
    assert TritonEngine(load_bundle(path), device="cpu", column_buckets_up_to=0).columns_up_to("decurved") == 0


@pytest.mark.parametrize("value", [-1, 1.5, True, "16"])
def test_bad_column_buckets_are_refused(bundle, value):
    with pytest.raises(ValueError, match="column_buckets_up_to"):
        TritonEngine(bundle, device="cpu", column_buckets_up_to=value)


def test_cpu_without_interpreter_is_refused(bundle, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_available("cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        TritonEngine(bundle, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu_is_refused(bundle):
    with pytest.raises(ValueError, match="the triton engine cannot run on cuda"):
        TritonEngine(bundle, device="cuda")


# --- GPU only ---

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from curvedit.synthetic import make_synthetic_bundle

    return load_bundle(make_synthetic_bundle(tmp_path_factory.mktemp("synthetic") / "d512"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("tf32", 5e-3), ("bf16", 1e-2)])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_gpu_engine_matches_torch(synthetic, precision, tol, graphs):
    z, t = latents(37, 512, 8)
    expected = TorchEngine(synthetic, "cuda").edit("decurved", z, t)
    engine = TritonEngine(synthetic, "cuda", precision=precision, use_cuda_graphs=graphs)
    got = engine.edit("decurved", z, t)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_graph_replay_equals_eager(synthetic, precision):
    """A replayed graph gives the eager launch's result bit for bit, for several batches sharing buckets."""
    eager = TritonEngine(synthetic, "cuda", precision=precision)
    graphs = TritonEngine(synthetic, "cuda", precision=precision, use_cuda_graphs=True)
    for batch, seed in [(20, 0), (32, 1), (3, 2), (20, 3)]:  # buckets 32, 32, 16, 32: captured once, replayed
        z, t = (torch.from_numpy(a).cuda() for a in latents(batch, 512, 8, seed))
        torch.testing.assert_close(graphs.edit_tensor("decurved", z, t), eager.edit_tensor("decurved", z, t),
                                   rtol=0, atol=0)
    assert len(graphs._plans) == 2


@pytest.mark.gpu
@needs_cuda
def test_gpu_graphs_with_a_mixing_layer_match_torch(tiny_bundle):
    """The tiny bundle's flow has a mixing layer: its two matmuls run inside the captured graph."""
    bundle = load_bundle(tiny_bundle)
    z, t = latents(21, 8, 4)
    expected = TorchEngine(bundle, "cuda").edit("decurved", z, t)
    engine = TritonEngine(bundle, "cuda", use_cuda_graphs=True)
    for _ in range(2):  # capture, then replay
        np.testing.assert_allclose(engine.edit("decurved", z, t), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("bf16", 1e-2)])
def test_gpu_column_graphs_match_torch_and_replay_exactly(synthetic, precision, tol):
    """The column-parallel kernels' 6·L + 1 launches captured in one graph per bucket: right, and replayed bit
    for bit."""
    engine = TritonEngine(synthetic, "cuda", precision=precision, use_cuda_graphs=True, column_buckets_up_to=64)
    eager = TritonEngine(synthetic, "cuda", precision=precision, column_buckets_up_to=64)
    for batch, seed in [(37, 0), (3, 1), (40, 2)]:  # buckets 64, 16, 64
        z, t = latents(batch, 512, 8, seed)
        expected = TorchEngine(synthetic, "cuda").edit("decurved", z, t)
        got = engine.edit("decurved", z, t)
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())
        np.testing.assert_array_equal(got, eager.edit("decurved", z, t))
    assert len(engine._plans) == 2


def test_batches_above_the_largest_bucket_run_in_chunks(tiny_bundle, monkeypatch):
    from curvedit.engines import triton_engine

    monkeypatch.setattr(triton_engine, "MAX_BUCKET", 8)
    engine = triton_engine.TritonEngine(load_bundle(tiny_bundle), device="cpu")
    reference = TorchEngine(load_bundle(tiny_bundle))
    z = np.random.default_rng(0).standard_normal((19, 8)).astype(np.float32)
    t = np.random.default_rng(1).standard_normal((19, 4)).astype(np.float32)
    expected = reference.edit("decurved", z, t)
    np.testing.assert_allclose(engine.edit("decurved", z, t), expected, rtol=1e-5, atol=1e-5)
    assert max(key[1] for key in engine._plans) <= 8
