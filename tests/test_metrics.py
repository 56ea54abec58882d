"""Each evaluation metric on a constructed case with a known answer."""

import math

import numpy as np
import pytest
import torch

from curvedit.evaluation import metrics


def plane_rotation(dim: int, i: int, j: int, angle: float) -> torch.Tensor:
    r = torch.eye(dim, dtype=torch.float64)
    c, s = math.cos(angle), math.sin(angle)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def rotation_editor(planes, theta: float = 1.0):
    """Direction k rotates z by ``amount · theta`` in plane ``planes[k]`` (rows: one amount per sample)."""

    def edit(z, amounts):
        for k, (i, j) in enumerate(planes):
            angle = amounts[:, k] * theta
            c, s = torch.cos(angle), torch.sin(angle)
            zi, zj = z[:, i].clone(), z[:, j].clone()
            z = z.clone()
            z[:, i], z[:, j] = c * zi - s * zj, s * zi + c * zj
        return z

    return edit


def linear_edit(z, amounts):
    directions = torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.5]], dtype=z.dtype)
    return z + amounts @ directions


@pytest.fixture
def z():
    return torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("metric", ["commutation", "loop", "round_trip", "curvature"])
def test_linear_edits_score_zero(z, metric):
    value = {
        "commutation": lambda: metrics.commutation_error(linear_edit, z, 2, 0, 1, 1.3, -0.7),
        "loop": lambda: metrics.loop_error(linear_edit, z, 2, 0, 1, 1.3, -0.7),
        "round_trip": lambda: metrics.round_trip_error(linear_edit, z, 2, 1, 2.0),
        "curvature": lambda: metrics.path_curvature(linear_edit, z, 2, 0, 2.0),
    }[metric]()
    assert value == pytest.approx(0.0, abs=1e-12)


def test_commuting_rotations_in_disjoint_planes_score_zero():
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    edit = rotation_editor([(0, 1), (2, 3)])
    assert metrics.commutation_error(edit, z, 2, 0, 1, 0.8, 1.1) == pytest.approx(0.0, abs=1e-12)


def test_rotation_pair_gives_the_matrix_value(z):
    """Rotations about different axes of R³ do not commute; the metric equals the value of the matrices."""
    edit = rotation_editor([(0, 1), (1, 2)])
    ta, tb = 0.9, 0.6
    ra, rb = plane_rotation(3, 0, 1, ta), plane_rotation(3, 1, 2, tb)
    ab, ba = z @ (ra @ rb).T, z @ (rb @ ra).T  # A(B(z)), B(A(z))
    expected = (ab - ba).norm(dim=1).mean() / (ab - z).norm(dim=1).mean()
    assert metrics.commutation_error(edit, z, 2, 0, 1, ta, tb) == pytest.approx(expected.item(), rel=1e-9)
    assert expected > 0.1


def test_rotation_loop_error_matches_commutator(z):
    edit = rotation_editor([(0, 1), (1, 2)])
    ra, rb = plane_rotation(3, 0, 1, 0.5), plane_rotation(3, 1, 2, 0.4)
    cycle = rb.T @ ra.T @ rb @ ra  # B₋ A₋ B₊ A₊
    forward = z @ (rb @ ra).T
    expected = (z @ cycle.T - z).norm(dim=1).mean() / (forward - z).norm(dim=1).mean()
    assert metrics.loop_error(edit, z, 2, 0, 1, 0.5, 0.4) == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("angle", [0.3, 1.0, 2.5])
def test_circular_path_curvature(angle):
    z = torch.randn(128, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    edit = rotation_editor([(0, 1)])
    expected = (1 - math.cos(angle / 2)) / (2 * math.sin(angle / 2))
    assert metrics.path_curvature(edit, z, 1, 0, angle) == pytest.approx(expected, rel=1e-9)


def test_rotation_round_trip_is_exact(z):
    edit = rotation_editor([(0, 1)])
    assert metrics.round_trip_error(edit, z, 1, 0, 1.2) == pytest.approx(0.0, abs=1e-12)


def test_frechet_identical_sets_is_zero():
    a = np.random.default_rng(0).standard_normal((300, 16))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_of_a_shift_is_its_squared_norm():
    a = np.random.default_rng(0).standard_normal((300, 8))
    shift = np.arange(8) / 4
    assert metrics.frechet_distance(a, a + shift) == pytest.approx((shift**2).sum(), rel=1e-6)


def test_frechet_of_known_gaussians():
    """Σa = I, Σb = 4I (as sample covariances): FD = D (1 + 4 − 2·2) = D."""
    a = np.random.default_rng(1).standard_normal((4000, 4))
    a = (a - a.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(a, rowvar=False))).T
    assert metrics.frechet_distance(a, 2 * a) == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize(("response", "expected"), [
    (torch.eye(4), (1.0, 1.0)),
    (torch.ones(4, 4), (0.0, 0.0)),
    (torch.tensor([[1.0, 0.0], [1.0, 0.0]]), (1.0, 0.0)),  # pure directions, both on one factor
])
def test_dci(response, expected):
    assert metrics.dci(response) == pytest.approx(expected, abs=1e-9)


def test_pure_count_counts_distinct_factors():
    assert metrics.pure_count(torch.tensor([0.9, 0.95, 0.5]), [0, 0, 1]) == 1
    assert metrics.pure_count(torch.tensor([0.9, 0.95, 0.81]), [0, 1, 2]) == 3


def test_typicality_of_unedited_latents():
    z = torch.randn(4096, 8, generator=torch.Generator().manual_seed(3))
    assert metrics.log_density_change(z, z) == 0.0
    # E|χ²_d − d|/d for d = 8 is about 0.5 (χ² with 8 dof has std 4)
    assert 0.3 < metrics.atypicality(z) < 0.6
    assert metrics.atypicality(3 * z) > 5
