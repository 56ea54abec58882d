"""The fused whole-edit kernel ``f⁻¹(f(z) + t)`` against the torch DeCurvEd edit, through the interpreter on the
CPU; its GPU-only cases (bf16, tf32, CUDA-graph buckets) skip without CUDA."""

import pytest
import torch
from conftest import randomize

from curvedit.kernels.configs import triton_available
from curvedit.kernels.edit import EditPlan, edit, edit_reference
from curvedit.kernels.packing import pack_flow
from curvedit.models.editors import DeCurvEd

needs_kernels = pytest.mark.skipif(not triton_available("cpu"), reason="needs TRITON_INTERPRET=1 (conftest)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (dim, hidden, layers, batch, K): batch 1, prime batches, widths that are not powers of two, K < d and K == d.
SHAPES = [(6, 24, 3, 7, 2), (10, 24, 2, 1, 10), (12, 24, 2, 13, 5), (64, 64, 2, 5, 8)]


def make_editor(dim: int, hidden: int, layers: int, directions: int, std: float | None = None,
                device: str = "cpu", mixing: bool = False) -> DeCurvEd:
    editor = DeCurvEd(dim, [f"axis{k}" for k in range(directions)], hidden=hidden, layers=layers, perm_seed=dim,
                      mixing=mixing)
    # Weight scale shrinks with width so activations stay O(1) and one tolerance fits every shape.
    std = 0.3 * (24 / max(hidden, 24)) ** 0.5 if std is None else std
    return randomize(editor, std=std, seed=dim).eval().to(device)


def inputs(batch: int, dim: int, directions: int, device: str = "cpu"):
    gen = torch.Generator().manual_seed(batch * 100 + dim)
    z, t = torch.randn(batch, dim, generator=gen), 2 * torch.randn(batch, directions, generator=gen)
    return z.to(device), t.to(device)


@needs_kernels
@pytest.mark.parametrize(("dim", "hidden", "layers", "batch", "directions"), SHAPES)
def test_edit_matches_decurved(dim, hidden, layers, batch, directions):
    editor = make_editor(dim, hidden, layers, directions)
    z, t = inputs(batch, dim, directions)
    with torch.no_grad():
        expected = editor.edit(z, t)
    torch.testing.assert_close(edit(z, t, pack_flow(editor)), expected, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize(("dim", "hidden", "layers", "batch", "directions"), SHAPES[:3])
def test_edit_with_a_mixing_layer_matches_decurved_and_inverts(dim, hidden, layers, batch, directions):
    editor = make_editor(dim, hidden, layers, directions, mixing=True)
    packed = pack_flow(editor)
    z, t = inputs(batch, dim, directions)
    with torch.no_grad():
        expected = editor.edit(z, t)
    edited = edit(z, t, packed)
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(edit_reference(z, t, packed), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(edit(edited, -t, packed), z, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize(("dim", "hidden", "layers", "batch", "directions"), SHAPES[:3])
def test_fp16_edit_matches_packed_reference(dim, hidden, layers, batch, directions):
    packed = pack_flow(make_editor(dim, hidden, layers, directions), "fp16")
    z, t = inputs(batch, dim, directions)
    torch.testing.assert_close(edit(z, t, packed), edit_reference(z, t, packed), rtol=2e-3, atol=2e-3)


@needs_kernels
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize(("dim", "hidden", "layers", "batch", "directions"), SHAPES[:3])
def test_minus_t_undoes_t(dim, hidden, layers, batch, directions, precision):
    packed = pack_flow(make_editor(dim, hidden, layers, directions), precision)
    z, t = inputs(batch, dim, directions)
    back = edit(edit(z, t, packed), -t, packed)
    torch.testing.assert_close(back, z, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_edits_commute():
    """Editing by a then b, b then a, and a + b at once all land on the same latent."""
    packed = pack_flow(make_editor(10, 24, 3, 4))
    z, a = inputs(5, 10, 4)
    b = torch.randn(5, 4)
    ab, ba = edit(edit(z, a, packed), b, packed), edit(edit(z, b, packed), a, packed)
    torch.testing.assert_close(ab, ba, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ab, edit(z, a + b, packed), rtol=1e-4, atol=1e-4)


@needs_kernels
def test_full_width_edit():
    """One d=512, h=512 edit through a one-layer flow (both kernel directions at the benchmark's width)."""
    editor = make_editor(512, 512, 1, 8, std=0.03)
    z, t = inputs(2, 512, 8)
    with torch.no_grad():
        expected = editor.edit(z, t)
    torch.testing.assert_close(edit(z, t, pack_flow(editor)), expected, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("bucket", [True, False])
def test_padding_rows_do_not_leak(bucket):
    """Bucketed (padded to a power of two) and exact-size launches give the same rows."""
    packed = pack_flow(make_editor(6, 24, 2, 3))
    z, t = inputs(5, 6, 3)
    out = edit(z, t, packed, bucket=bucket)
    assert out.shape == (5, 6)
    torch.testing.assert_close(out, edit_reference(z, t, packed), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_plan_can_be_relaunched_with_new_inputs():
    """EditPlan keeps fixed buffers (what a CUDA graph replays): refilling z and t gives the new edit."""
    packed = pack_flow(make_editor(6, 24, 2, 3))
    plan = EditPlan(packed, bucket=8, directions=3)
    for scale in (1.0, -0.5):
        z, t = inputs(8, 6, 3)
        z, t = z * scale, t * scale
        plan.z.copy_(z)
        plan.t.copy_(t)
        plan.launch()
        torch.testing.assert_close(plan.out, edit_reference(z, t, packed), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("amounts", "message"), [
    (torch.zeros(4, 7), r"1 <= K <= 6"),
    (torch.zeros(3, 2), r"\[4, K\]"),
    (torch.zeros(4, 2, dtype=torch.float16), "float32"),
    (torch.zeros(4, 2).numpy(), "torch.Tensor"),
])
def test_edit_rejects_bad_amounts(amounts, message):
    packed = pack_flow(make_editor(6, 24, 2, 3))
    with pytest.raises(ValueError, match=message):
        edit(torch.zeros(4, 6), amounts, packed)


def test_without_triton_the_reference_runs(monkeypatch):
    """Where Triton cannot run (a CPU without the interpreter) the launchers return the reference's result."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_available("cpu")
    packed = pack_flow(make_editor(6, 24, 2, 3))
    z, t = inputs(4, 6, 3)
    torch.testing.assert_close(edit(z, t, packed), edit_reference(z, t, packed), rtol=0, atol=0)


def test_reference_matches_decurved():
    """The fallback path where Triton cannot run is the editor's own math."""
    editor = make_editor(12, 24, 3, 5)
    z, t = inputs(4, 12, 5)
    with torch.no_grad():
        torch.testing.assert_close(edit_reference(z, t, pack_flow(editor)), editor.edit(z, t), rtol=1e-5,
                                   atol=1e-5)


# --- GPU only: bf16 and tf32 MLPs (not testable in the interpreter) on the benchmark's flow size ---
# A d=512, h=512, 8-layer flow with N(0, 0.02²) weights, as `curvedit.synthetic` builds for the benchmark: edits
# move z by ~4-7 units. Errors are measured against the fp32 torch module, relative to the latent's scale; the
# bf16 figures were calibrated with the bf16-emulating reference on the CPU (max error ~2.4e-3 at scale ~7.7).
GPU_TOLERANCES = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 1e-2}
# Round trips: a bf16/tf32 MLP rounds its input, so f(f⁻¹(v)) sees an x1 one rounding step away from the
# original and the round trip is exact only to that rounding (measured ~1e-3 with the reference at bf16).
GPU_ROUND_TRIP = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 2e-2}


def gpu_editor(mixing: bool = False) -> DeCurvEd:
    # conftest defaults TRITON_INTERPRET to 1, and then the launchers would quietly run the torch reference:
    # GPU runs must set TRITON_INTERPRET=0, and this makes forgetting it fail instead of pass vacuously.
    assert triton_available("cuda"), "GPU kernel tests need TRITON_INTERPRET=0 in the environment"
    return make_editor(512, 512, 8, 8, std=0.02, device="cuda", mixing=mixing)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mixing", [False, True], ids=["plain", "mixing"])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("batch", [1, 7, 64, 300])
def test_gpu_edit_matches_decurved(batch, precision, mixing):
    editor = gpu_editor(mixing)
    z, t = inputs(batch, 512, 8, device="cuda")
    with torch.no_grad():
        expected = editor.edit(z, t)
    got = edit(z, t, pack_flow(editor, precision))
    tol = GPU_TOLERANCES[precision]
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * expected.abs().max().item())


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_gpu_minus_t_undoes_t(precision):
    packed = pack_flow(gpu_editor(), precision)
    z, t = inputs(64, 512, 8, device="cuda")
    tol = GPU_ROUND_TRIP[precision]
    torch.testing.assert_close(edit(edit(z, t, packed), -t, packed), z, rtol=tol, atol=tol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_coupling_layers_invert(precision):
    """Single-layer kernels on the GPU: the inverse undoes the forward and the log-dets cancel exactly."""
    from curvedit.kernels.coupling import coupling_forward, coupling_inverse

    packed = pack_flow(gpu_editor(), precision)
    z, _ = inputs(33, 512, 8, device="cuda")
    y, ld = coupling_forward(z, packed, layer=3, logabsdet=True)
    back, ld_inverse = coupling_inverse(y, packed, layer=3, logabsdet=True)
    torch.testing.assert_close(back, z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld_inverse, -ld, rtol=0, atol=0)
