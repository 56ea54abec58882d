"""Property tests of the affine coupling flow: exact inverse, closed-form log-det, identity at init."""

import pytest
import torch
from conftest import randomize

from curvedit.models.flows import CouplingFlow, FlowConfig

WIDTHS = [2, 3, 5, 8, 13, 64]


def make_flow(dim: int, hidden: int = 16, layers: int = 4) -> CouplingFlow:
    # Weights scaled by 1/sqrt(dim), as a trained flow's are: a strong but well-conditioned transform.
    return randomize(CouplingFlow(FlowConfig(dim, hidden, layers)), std=0.6 / dim**0.5, seed=dim).double()


@pytest.mark.parametrize("dim", WIDTHS)
def test_inverse_of_forward_is_identity_fp32(dim):
    flow = make_flow(dim).float()
    x = torch.randn(33, dim)
    y, _ = flow(x)
    back, _ = flow.inverse(y)
    assert (y - x).abs().max() > 1e-2  # a real transform, not the identity
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", WIDTHS)
def test_forward_of_inverse_is_identity_fp32(dim):
    flow = make_flow(dim).float()
    y = torch.randn(17, dim)
    torch.testing.assert_close(flow(flow.inverse(y)[0])[0], y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", WIDTHS)
def test_logdets_cancel(dim):
    flow = make_flow(dim)
    x = torch.randn(9, dim, dtype=torch.float64)
    y, forward_logdet = flow(x)
    _, inverse_logdet = flow.inverse(y)
    assert forward_logdet.shape == (9,)
    torch.testing.assert_close(forward_logdet, -inverse_logdet, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dim", [2, 3, 5, 8])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_logdet_matches_autograd_jacobian(dim, direction):
    flow = make_flow(dim)
    fn = flow if direction == "forward" else flow.inverse
    x = torch.randn(4, dim, dtype=torch.float64)
    _, logdet = fn(x)
    for i in range(x.shape[0]):
        jacobian = torch.autograd.functional.jacobian(lambda row: fn(row[None])[0][0], x[i])
        expected = torch.linalg.slogdet(jacobian).logabsdet
        torch.testing.assert_close(logdet[i], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dim", [2, 7, 8])
def test_new_flow_is_a_permutation_with_zero_logdet(dim):
    flow = CouplingFlow(FlowConfig(dim, hidden=8, layers=3))
    x = torch.randn(5, dim)
    y, logdet = flow(x)
    assert torch.equal(logdet, torch.zeros(5))
    assert torch.equal(y.sort(dim=1).values, x.sort(dim=1).values)


def test_log_scale_is_soft_clamped():
    flow = CouplingFlow(FlowConfig(4, hidden=8, layers=1, clamp=1.5))
    with torch.no_grad():
        flow.layers[0].net[-1].bias.fill_(100.0)  # huge raw log-scales
    _, logdet = flow(torch.randn(3, 4))
    assert torch.all(logdet.abs() <= 2 * 1.5 + 1e-5)  # 2 scaled coordinates, each |s| < clamp


@pytest.mark.parametrize(("field", "value", "message"), [
    ("dim", 1, "a coupling flow needs dim >= 2, got 1"),
    ("hidden", 0, "hidden and layers must be >= 1, got hidden=0 layers=8"),
    ("layers", 0, "hidden and layers must be >= 1, got hidden=64 layers=0"),
    ("clamp", 0.0, "clamp must be > 0, got 0.0"),
])
def test_bad_config_is_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        FlowConfig(**{"dim": 4, field: value})


def make_mixing_flow(dim: int) -> CouplingFlow:
    return randomize(CouplingFlow(FlowConfig(dim, 16, 3, mixing=True)), std=0.6 / dim**0.5, seed=dim).double()


@pytest.mark.parametrize("dim", [2, 5, 8])
def test_mixing_flow_inverts_and_its_logdet_matches_the_jacobian(dim):
    flow = make_mixing_flow(dim)
    x = torch.randn(6, dim, dtype=torch.float64)
    y, logdet = flow(x)
    back, inverse_logdet = flow.inverse(y)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=0, atol=1e-10)
    jacobian = torch.autograd.functional.jacobian(lambda row: flow(row[None])[0][0], x[0])
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jacobian).logabsdet, rtol=0, atol=1e-9)
    assert abs(torch.linalg.slogdet(flow.mixing.weight).logabsdet.item()) > 1e-3  # an oblique W, not I


def test_new_mixing_layer_is_the_identity_and_its_inverse_matrix_is_exact():
    flow = CouplingFlow(FlowConfig(6, hidden=8, layers=2, mixing=True))
    assert torch.equal(flow.mixing.weight, torch.eye(6))
    randomize(flow, seed=4)
    w = flow.mixing.weight.detach()
    torch.testing.assert_close(flow.mixing.inverse_matrix() @ w, torch.eye(6), rtol=0, atol=1e-6)
