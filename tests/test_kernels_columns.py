"""The column-parallel kernels (``kernels/columns.py``) against the DeCurvEd edit and the packed references,
through the interpreter on the CPU; their GPU cases (bf16, tf32, the benchmark's d = 512 flow) skip without
CUDA."""

import pytest
import torch
from test_kernels_edit import GPU_ROUND_TRIP, GPU_TOLERANCES, SHAPES, gpu_editor, inputs, make_editor

from curvedit.kernels.columns import ColumnEditPlan, column_coupling, column_edit
from curvedit.kernels.configs import triton_available
from curvedit.kernels.coupling import coupling_reference
from curvedit.kernels.edit import edit, edit_reference
from curvedit.kernels.packing import pack_flow

needs_kernels = pytest.mark.skipif(not triton_available("cpu"), reason="needs TRITON_INTERPRET=1 (conftest)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_kernels
@pytest.mark.parametrize(("dim", "hidden", "layers", "batch", "directions"), SHAPES)
def test_column_edit_matches_decurved(dim, hidden, layers, batch, directions):
    editor = make_editor(dim, hidden, layers, directions)
    z, t = inputs(batch, dim, directions)
    with torch.no_grad():
        expected = editor.edit(z, t)
    torch.testing.assert_close(column_edit(z, t, pack_flow(editor)), expected, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize(("dim", "hidden", "layers", "batch", "directions"), SHAPES[:3])
def test_column_edit_with_a_mixing_layer_matches_decurved_and_inverts(dim, hidden, layers, batch, directions):
    editor = make_editor(dim, hidden, layers, directions, mixing=True)
    packed = pack_flow(editor)
    z, t = inputs(batch, dim, directions)
    with torch.no_grad():
        expected = editor.edit(z, t)
    edited = column_edit(z, t, packed)
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(column_edit(edited, -t, packed), z, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize(("dim", "hidden", "layers", "batch", "directions"), SHAPES[:3])
def test_column_fp16_edit_matches_packed_reference_and_the_fused_kernel(dim, hidden, layers, batch, directions):
    packed = pack_flow(make_editor(dim, hidden, layers, directions), "fp16")
    z, t = inputs(batch, dim, directions)
    got = column_edit(z, t, packed)
    torch.testing.assert_close(got, edit_reference(z, t, packed), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(got, edit(z, t, packed), rtol=2e-3, atol=2e-3)


@needs_kernels
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize(("dim", "hidden", "layers", "batch", "directions"), SHAPES[:3])
def test_column_minus_t_undoes_t(dim, hidden, layers, batch, directions, precision):
    packed = pack_flow(make_editor(dim, hidden, layers, directions), precision)
    z, t = inputs(batch, dim, directions)
    torch.testing.assert_close(column_edit(column_edit(z, t, packed), -t, packed), z, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize(("dim", "hidden", "batch"), [(6, 24, 7), (7, 16, 3), (64, 48, 17)])
def test_column_layer_matches_reference_and_inverts(dim, hidden, batch, reverse):
    """One layer both ways, odd widths included (split != rest): the x1 pass-through blocks and the s/t blocks
    together cover every column, and the inverse undoes the forward to fp32 rounding."""
    packed = pack_flow(make_editor(dim, hidden, 2, 1))
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(batch))
    y = column_coupling(x, packed, layer=1, reverse=reverse)
    torch.testing.assert_close(y, coupling_reference(x, packed, 1, reverse)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(column_coupling(y, packed, layer=1, reverse=not reverse), x, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_full_width_column_edit():
    """One d=512, h=512 edit through a one-layer flow: 512-wide stages split over several column blocks."""
    editor = make_editor(512, 512, 1, 8, std=0.03)
    z, t = inputs(2, 512, 8)
    with torch.no_grad():
        expected = editor.edit(z, t)
    torch.testing.assert_close(column_edit(z, t, pack_flow(editor)), expected, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_column_plan_can_be_relaunched_with_new_inputs():
    """ColumnEditPlan keeps fixed buffers and never writes z or t, so relaunching (what a CUDA graph replay does)
    gives the same output, and refilling z and t gives the new edit."""
    packed = pack_flow(make_editor(6, 24, 2, 3, mixing=True))
    plan = ColumnEditPlan(packed, bucket=8, directions=3)
    for scale in (1.0, -0.5):
        z, t = inputs(8, 6, 3)
        plan.z.copy_(z * scale)
        plan.t.copy_(t * scale)
        plan.launch()
        first = plan.out.clone()
        plan.launch()
        torch.testing.assert_close(plan.out, first, rtol=0, atol=0)
        torch.testing.assert_close(first, edit_reference(z * scale, t * scale, packed), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("call", "message"), [
    (lambda p: column_edit(torch.zeros(4, 5), torch.zeros(4, 2), p), r"\[batch >= 1, 6\]"),
    (lambda p: column_edit(torch.zeros(4, 6), torch.zeros(4, 7), p), r"1 <= K <= 6"),
    (lambda p: column_coupling(torch.zeros(4, 6), p, layer=2), r"layer must be in \[0, 2\)"),
    (lambda p: ColumnEditPlan(p, bucket=0, directions=1), "bucket >= 1"),
])
def test_column_launchers_reject_bad_input(call, message):
    packed = pack_flow(make_editor(6, 24, 2, 3))
    with pytest.raises(ValueError, match=message):
        call(packed)


def test_without_triton_the_reference_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_available("cpu")
    packed = pack_flow(make_editor(6, 24, 2, 3))
    z, t = inputs(4, 6, 3)
    torch.testing.assert_close(column_edit(z, t, packed), edit_reference(z, t, packed), rtol=0, atol=0)
    torch.testing.assert_close(column_coupling(z, packed, 0), coupling_reference(z, packed, 0)[0], rtol=0, atol=0)


# --- GPU only: the benchmark's d=512, 8-layer flow (test_kernels_edit's tolerances) -----------------------------
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_gpu_column_edit_matches_decurved(batch, precision):
    editor = gpu_editor()
    z, t = inputs(batch, 512, 8, device="cuda")
    with torch.no_grad():
        expected = editor.edit(z, t)
    got = column_edit(z, t, pack_flow(editor, precision))
    tol = GPU_TOLERANCES[precision]
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * expected.abs().max().item())


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_column_minus_t_undoes_t(precision):
    packed = pack_flow(gpu_editor(), precision)
    z, t = inputs(64, 512, 8, device="cuda")
    tol = GPU_ROUND_TRIP[precision]
    torch.testing.assert_close(column_edit(column_edit(z, t, packed), -t, packed), z, rtol=tol, atol=tol)
