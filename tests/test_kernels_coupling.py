"""The fused coupling-layer kernel against the torch layer (models.flows.AffineCoupling) and its packed-weight
reference, through Triton's interpreter on the CPU (conftest sets TRITON_INTERPRET=1)."""

import pytest
import torch
from conftest import randomize
from numerics import EPS, assert_within, coupling_bound

from curvedit.kernels.configs import bucket_size, triton_available
from curvedit.kernels.coupling import coupling_forward, coupling_inverse, coupling_reference
from curvedit.kernels.packing import pack_flow
from curvedit.models.flows import CouplingFlow, FlowConfig

needs_kernels = pytest.mark.skipif(not triton_available("cpu"), reason="needs TRITON_INTERPRET=1 (conftest)")

# (dim, hidden, batch): batch 1, a prime batch, odd and non-power-of-two widths (odd dim: split != rest).
SHAPES = [(6, 24, 7), (10, 24, 1), (12, 24, 7), (7, 16, 3), (64, 48, 17)]
# fp32 is compared with the nn.Module within the two implementations' rounding bounds (each within
# numerics.coupling_bound of the exact layer); fp16 with the packed reference, which rounds like the kernel.
FP16_TOLERANCE = {"rtol": 2e-3, "atol": 2e-3}


def make_flow(dim: int, hidden: int, layers: int = 2, std: float = 0.3) -> CouplingFlow:
    # std shrinks with width so activations stay O(1) and tolerances mean the same thing at every size.
    return randomize(CouplingFlow(FlowConfig(dim, hidden, layers, perm_seed=dim)), std=std, seed=dim).eval()


def expected(flow: CouplingFlow, x: torch.Tensor, layer: int, precision: str, reverse: bool):
    if precision == "fp32":
        with torch.no_grad():
            module = flow.layers[layer]
            return module.inverse(x) if reverse else module(x)
    return coupling_reference(x, pack_flow(flow, precision), layer, reverse)


@needs_kernels
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize(("dim", "hidden", "batch"), SHAPES)
def test_layer_matches_reference(dim, hidden, batch, reverse, precision):
    flow = make_flow(dim, hidden)
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(batch))
    run = coupling_inverse if reverse else coupling_forward
    y, logabsdet = run(x, pack_flow(flow, precision), layer=1, logabsdet=True)
    y_ref, logabsdet_ref = expected(flow, x, 1, precision, reverse)
    if precision == "fp16":
        torch.testing.assert_close(y, y_ref, **FP16_TOLERANCE)
        torch.testing.assert_close(logabsdet, logabsdet_ref, **FP16_TOLERANCE)
        return
    _, bound, _, logabsdet_bound = coupling_bound(flow.layers[1], x, torch.zeros_like(x), EPS[torch.float32],
                                                  reverse)
    assert_within(y, y_ref, 2 * bound, "y")  # both round: kernel and module, each within the bound
    assert_within(logabsdet, logabsdet_ref, 2 * logabsdet_bound, "logabsdet")


@needs_kernels
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize(("dim", "hidden", "batch"), SHAPES)
def test_inverse_undoes_forward(dim, hidden, batch, precision):
    packed = pack_flow(make_flow(dim, hidden), precision)
    x = torch.randn(batch, dim)
    y, ld_forward = coupling_forward(x, packed, layer=0, logabsdet=True)
    x_back, ld_inverse = coupling_inverse(y, packed, layer=0, logabsdet=True)
    # The inverse recomputes s and t from bit-identical x1, so even fp16 MLPs invert to fp32 rounding.
    torch.testing.assert_close(x_back, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld_inverse, -ld_forward, rtol=0, atol=0)


@needs_kernels
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "inverse"])
def test_full_width_layer(reverse):
    """One d=512, h=512 launch (the benchmark's size): weights streamed in tiles, masks on no edge."""
    flow = make_flow(512, 512, layers=1, std=0.03)
    x = torch.randn(3, 512)
    run = coupling_inverse if reverse else coupling_forward
    y, logabsdet = run(x, pack_flow(flow), layer=0, logabsdet=True)
    y_ref, logabsdet_ref = expected(flow, x, 0, "fp32", reverse)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logabsdet, logabsdet_ref, rtol=1e-4, atol=1e-3)


@needs_kernels
def test_logabsdet_is_optional():
    packed = pack_flow(make_flow(6, 24))
    x = torch.randn(5, 6)
    y, logabsdet = coupling_forward(x, packed, layer=0)
    assert logabsdet is None
    torch.testing.assert_close(y, coupling_forward(x, packed, layer=0, logabsdet=True)[0], rtol=0, atol=0)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "inverse"])
def test_packed_reference_matches_module(reverse):
    """The reference the kernels fall back on is the module's math at fp32."""
    flow = make_flow(10, 24)
    x = torch.randn(4, 10)
    got = coupling_reference(x, pack_flow(flow), layer=1, reverse=reverse)
    torch.testing.assert_close(got, expected(flow, x, 1, "fp32", reverse), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("bad", "message"), [
    (torch.randn(3, 5), r"\[batch >= 1, 6\]"),
    (torch.randn(6), r"\[batch >= 1, 6\]"),
    (torch.randn(0, 6), r"\[batch >= 1, 6\]"),
    (torch.randn(3, 6, dtype=torch.float64), "float32"),
    ([[0.0] * 6], "torch.Tensor"),
])
def test_launcher_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        coupling_forward(bad, pack_flow(make_flow(6, 24)), layer=0)


@pytest.mark.parametrize("layer", [-1, 2])
def test_launcher_rejects_bad_layer(layer):
    with pytest.raises(ValueError, match=rf"layer must be in \[0, 2\), got {layer}"):
        coupling_inverse(torch.randn(2, 6), pack_flow(make_flow(6, 24)), layer=layer)


def test_pack_flow_rejects_other_modules():
    with pytest.raises(ValueError, match="pack_flow needs a CouplingFlow or a DeCurvEd editor, got Linear"):
        pack_flow(torch.nn.Linear(4, 4))


def test_pack_flow_rejects_an_unknown_precision():
    with pytest.raises(ValueError, match=r"unknown MLP precision 'int8'; choose one of \["):
        pack_flow(make_flow(6, 24), "int8")


@pytest.mark.parametrize(("batch", "minimum", "bucket"), [(1, 1, 1), (1, 16, 16), (7, 1, 8), (16, 16, 16),
                                                          (17, 16, 32), (4096, 16, 4096)])
def test_bucket_size(batch, minimum, bucket):
    assert bucket_size(batch, minimum) == bucket
