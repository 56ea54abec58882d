"""The known-chart generator: ψ is an exact bijection, its chart editor is the ideal editor, the linear ceiling."""

import math

import pytest
import torch
from numerics import EPS, in_float64, jacobian_norms

from curvedit.bundle import load_bundle, write_bundle
from curvedit.evaluation.metrics import commutation_error, path_curvature
from curvedit.models.editors import DeCurvEd
from curvedit.models.known_chart import (
    ChartFactors,
    KnownChart,
    KnownChartConfig,
    chart_editor,
    linear_ceiling,
)
from curvedit.models.measure import factor_response, purity
from curvedit.models.renderer import FACTOR_NAMES, render, unstandardize


@pytest.fixture
def latents():
    return torch.randn(512, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("first", ["chart", "inverse"])
@pytest.mark.parametrize("curvature", [0.0, 0.5, 1.2, 3.0])
def test_psi_round_trips(latents, curvature, first):
    """Rounding only: each of the 2·layers + 2 passes (shears, A, A⁻¹) rounds by ≤ √6·ε relative to its row, and
    the second half amplifies the first half's error by ≤ its Jacobian's norm (tests/numerics.py; measured
    amplification 1.3–16, errors 5e-7–1e-5 against bounds 10–30× higher)."""
    chart = KnownChart(KnownChartConfig(curvature=curvature))
    second = "inverse" if first == "chart" else "chart"
    with torch.no_grad():
        middle = getattr(chart, first)(latents)
        back = getattr(chart, second)(middle)
    amplification = jacobian_norms(getattr(in_float64(chart), second), middle.double())
    per_pass = math.sqrt(latents.shape[1]) * EPS[torch.float32]
    bound = (2 * chart.config.layers + 2) * per_pass * (amplification * middle.double().norm(dim=1)
                                                        + latents.double().norm(dim=1))
    assert torch.all((back - latents).double().norm(dim=1) <= bound)


def test_curvature_zero_is_the_linear_map(latents):
    chart = KnownChart(KnownChartConfig(curvature=0.0))
    assert torch.allclose(chart.chart(latents), latents @ chart.fc.weight.T, atol=1e-6)
    assert not torch.allclose(KnownChart(KnownChartConfig(curvature=0.5)).chart(latents), chart.chart(latents))


def test_generator_interface(latents):
    """Images are the renders of the true factors ψ(z), in the generator range [-1, 1]."""
    chart = KnownChart(KnownChartConfig(curvature=0.5))
    images = chart(latents[:4])
    assert images.shape == (4, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    torch.testing.assert_close(images, render(unstandardize(chart.chart(latents[:4]))) * 2 - 1)
    assert chart.config.latent_dim == 6 and chart.config.image_size == 32


@pytest.mark.parametrize("curvature", [0.0, 1.2])
def test_ideal_editor_scores_purity_one(latents, curvature):
    """Off-target factor changes are float round-off of ψ(ψ⁻¹(u + t)) − u, about 1e-6 of the unit on-target
    change, so purity is 1 to within 1e-4 (a generous bound that any real leak of 1e-3 would break)."""
    chart = KnownChart(KnownChartConfig(curvature=curvature))
    editor = chart_editor(chart)
    response = factor_response(ChartFactors(chart), editor, torch.nn.Identity(), latents, amount=1.0)
    per_direction = purity(response, list(range(6)))
    assert torch.all(per_direction > 1 - 1e-4), per_direction
    assert torch.allclose(response.diagonal(), torch.ones(6), atol=1e-4)  # gain 1 per unit amount


@pytest.mark.parametrize("curvature", [0.0, 1.2])
def test_warm_started_decurved_begins_at_the_best_linear_chart(latents, curvature):
    """Before any training step, a mixing DeCurvEd warm-started from factor readings is the least-squares linear
    chart: exact in the linear world (purity 1), and in a curved one already near the linear ceiling."""
    chart = KnownChart(KnownChartConfig(curvature=curvature))
    editor = DeCurvEd(6, list(FACTOR_NAMES), mixing=True)
    z = torch.randn(4096, 6, generator=torch.Generator().manual_seed(1))
    editor.warm_start(z, chart.chart(z))
    response = factor_response(ChartFactors(chart), editor, torch.nn.Identity(), latents, amount=1.0)
    mean_purity = purity(response, list(range(6))).mean().item()
    if curvature == 0:
        assert mean_purity > 1 - 1e-4 and torch.allclose(response.diagonal(), torch.ones(6), atol=1e-4)
    else:
        assert mean_purity < 0.99, "the curved chart should not be linear"
        assert mean_purity > 0.8 * linear_ceiling(chart, steps=100)["mean_purity"]


def test_warm_start_needs_a_mixing_layer():
    with pytest.raises(ValueError, match="mixing=True"):
        DeCurvEd(6, list(FACTOR_NAMES)).warm_start(torch.randn(10, 6), torch.randn(10, 6))


def test_ideal_editor_commutes_and_curves(latents):
    editor = chart_editor(KnownChart(KnownChartConfig(curvature=1.2)))
    assert commutation_error(editor.edit, latents, 6, 0, 2, 1.0, 1.0) < 1e-5
    assert path_curvature(editor.edit, latents, 6, 0, 2.0) > 1e-2
    straight = chart_editor(KnownChart(KnownChartConfig(curvature=0.0)))
    assert path_curvature(straight.edit, latents, 6, 0, 2.0) < 1e-5


def test_linear_ceiling_is_one_at_curvature_zero_and_drops_with_curvature():
    flat = linear_ceiling(KnownChart(KnownChartConfig(curvature=0.0)), samples=256, steps=5)
    curved = linear_ceiling(KnownChart(KnownChartConfig(curvature=1.2)), samples=256, steps=40)
    assert flat["mean_purity"] > 1 - 1e-4
    assert curved["mean_purity"] < 0.8


def test_known_chart_bundle_round_trip(tmp_path, latents):
    chart = KnownChart(KnownChartConfig(curvature=0.5, seed=3))
    editor = chart_editor(chart, ["x", "scale"])
    write_bundle(tmp_path / "b", name="kc", version="1", generator=chart,
                 editors={"chart": (editor, "supervised", {})}, default_editor="chart")
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest["generator"]["kind"] == "known-chart"
    assert bundle.manifest["generator"]["config"]["curvature"] == 0.5
    assert isinstance(bundle.generator, KnownChart)
    with torch.no_grad():
        assert torch.equal(bundle.generator(latents[:4]), chart(latents[:4]))
        amounts = torch.randn(16, 2)
        assert torch.equal(bundle.editors["chart"].edit(latents[:16], amounts), editor.edit(latents[:16], amounts))
    assert bundle.editors["chart"].directions == ["x", "scale"] and set(FACTOR_NAMES) >= {"x", "scale"}
