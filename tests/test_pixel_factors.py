"""The held-out pixel instrument: statistics read from renders without the regressor, each tied to its factor."""

import numpy as np
import pytest

from curvedit.evaluation.pixel_factors import STATS, difference, pixel_factors, pixel_response
from curvedit.models.files import to_uint8
from curvedit.models.known_chart import KnownChart, KnownChartConfig, chart_editor
from curvedit.models.renderer import FACTOR_NAMES, RenderedShapes


@pytest.fixture(scope="module")
def renders():
    images, factors = RenderedShapes(seed=3).next_batch(1000)
    return pixel_factors(to_uint8(images)), factors.numpy()


@pytest.mark.parametrize("j", range(len(FACTOR_NAMES)))
def test_each_statistic_follows_its_own_factor(renders, j):
    """Correlation with its own factor above 0.9 and with every other factor below 0.1 on real renders."""
    stats, factors = renders
    correlation = np.corrcoef(stats[:, j], factors.T)[0, 1:]
    assert correlation[j] > 0.9, correlation
    assert np.all(np.abs(np.delete(correlation, j)) < 0.1), correlation


def test_stats_are_named_like_the_factors():
    assert STATS == FACTOR_NAMES


@pytest.mark.parametrize(("name", "period"), [("rotation", np.pi), ("hue", 1.0)])
def test_periodic_differences_wrap_to_the_short_way_round(name, period):
    j = STATS.index(name)
    before, after = np.zeros((1, 6)), np.zeros((1, 6))
    before[0, j], after[0, j] = 0.45 * period, -0.45 * period
    assert difference(after, before)[0, j] == pytest.approx(0.1 * period)


def test_a_plain_statistic_does_not_wrap():
    before, after = np.zeros((1, 6)), np.full((1, 6), 10.0)
    assert difference(after, before)[0, 0] == 10.0


def test_a_single_factor_edit_is_mostly_pure_in_pixels():
    """Moving one true factor by ±1 (rendered exactly) moves its statistic most: pixel purity > 0.75 for every
    factor (the instrument's own ceiling; the statistics of thin or small shapes are noisy)."""
    raw = RenderedShapes(seed=4).next_batch(256)[1]
    chart = KnownChart(KnownChartConfig(curvature=0.0))
    z = chart.inverse(raw)
    spread = pixel_factors(to_uint8(RenderedShapes(seed=5).next_batch(1000)[0])).std(0)
    response = pixel_response(chart, chart_editor(chart), z, spread).numpy()
    purity = np.diag(response) / response.sum(1)
    assert np.all(purity > 0.75), purity



def test_background_speckle_does_not_move_the_statistics(renders):
    """Generated images speckle their background by a few grey levels; far stray pixels would dominate the
    fourth moment. Speckle of up to 20 levels moves no statistic by more than 0.1 of its spread on renders."""
    images = to_uint8(RenderedShapes(seed=3).next_batch(200)[0])
    background = np.all(images == images[:, :1, :1], axis=3, keepdims=True)  # the corner's colour
    noise = np.random.default_rng(0).integers(0, 21, images.shape, dtype=np.int16) * background
    speckled = np.clip(images.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    moved = np.abs(difference(pixel_factors(speckled), pixel_factors(images))).mean(0) / renders[0].std(0)
    assert np.all(moved < 0.1), moved
