"""The comparison's new editors: group-difference attribute vectors (``attrdiff``), a generator's own axes
(``axes``) and NeuralODE vector fields (``neuralode``): properties that follow from each method, constructed cases
with known answers, and ONNX export verified on batch sizes other than the export's."""

import copy
import shutil

import numpy as np
import pytest
import torch
from conftest import randomize
from numerics import EPS

import curvedit
from curvedit.bundle import write_bundle
from curvedit.evaluation.metrics import commutation_error, round_trip_error, single
from curvedit.export.onnx_export import export_bundle
from curvedit.models.editors import EDITOR_KINDS, build_editor
from curvedit.models.fit_editors import fit_attrdiff, fit_axes, fit_editor, make_editor
from curvedit.models.generator import Generator, GeneratorConfig
from curvedit.models.infogan import InfoGAN, InfoGANConfig
from curvedit.models.known_chart import KnownChart, KnownChartConfig
from curvedit.models.labelled_editors import AttributeVectorEditor, AxesEditor, group_difference, match_greedy
from curvedit.models.measure import factor_response, purity
from curvedit.models.neuralode_editor import NeuralODEEditor, rk4
from curvedit.models.regressor import FactorRegressor
from curvedit.models.renderer import FACTOR_NAMES
from curvedit.models.train_editor import EditorTrainConfig

NEW_KINDS = ("attrdiff", "axes", "neuralode")
D, DIRECTIONS = 6, ["x", "y", "scale", "rotation"]


def make(kind: str) -> torch.nn.Module:
    """An editor of ``kind`` with non-trivial weights (a random matrix for the fitted linear kinds)."""
    if kind == "axes":
        return AxesEditor(D, DIRECTIONS, [3, 0, 5, 1]).eval()
    if kind == "attrdiff":
        matrix = torch.randn(D, len(DIRECTIONS), generator=torch.Generator().manual_seed(1))
        return AttributeVectorEditor.from_matrix(matrix, DIRECTIONS)
    editor = NeuralODEEditor(D, DIRECTIONS, hidden=16)
    with torch.no_grad():
        randomize(editor, std=0.4, seed=3)
    return editor.eval()


def latents(n: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_zero_amount_leaves_the_latent_unchanged(kind):
    z = latents()
    assert torch.equal(make(kind).edit(z, torch.zeros(len(z), len(DIRECTIONS))), z)


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("amount", [-1.5, 0.7, 2.0])
def test_negative_amount_undoes_an_edit(kind, amount):
    """Exact for the linear kinds (rounding only); within RK4's truncation error for the NeuralODE fields
    (integrated back along the same field)."""
    editor = make(kind)
    for k in range(len(DIRECTIONS)):
        error = round_trip_error(editor.edit, latents(), len(DIRECTIONS), k, amount)
        assert error < _round_trip_tolerance(editor, k, amount)


def _round_trip_tolerance(editor, k: int, amount: float) -> float:
    """Linear kinds: z + At − At rounds each element a few times: relative to ‖At‖, ≤ 4·ε·(‖z‖/‖At‖ + 1)
    (measured 20–56× below). RK4: Richardson's estimate of the truncation error at h (16/15 of the change when h
    halves), once there and once back, doubled to cover the estimate's own O(h⁵) error (measured 11–68× below)."""
    z = latents()
    there = editor.edit(z, single(z, len(DIRECTIONS), k, amount))
    if not isinstance(editor, NeuralODEEditor):
        return 4 * EPS[torch.float32] * ((z.norm() / (there - z).norm()).item() + 1)
    finer = copy.deepcopy(editor)
    finer.steps = 2 * editor.steps
    change = (finer.edit(z, single(z, len(DIRECTIONS), k, amount)) - there).norm() / (there - z).norm()
    return 2 * 2 * 16 / 15 * change.item()


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("pair", [(0, 1), (1, 3), (2, 0)])
def test_edits_commute_exactly_when_the_method_says_so(kind, pair):
    """Linear kinds commute to float precision; two NeuralODE fields in general do not (non-zero Lie bracket)."""
    editor = make(kind)
    error = commutation_error(editor.edit, latents(), len(DIRECTIONS), *pair, 1.0, 1.0)
    if editor.commutative:
        assert error < 1e-6
    else:
        assert error > 1e-3


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_config_rebuilds_the_same_editor(kind):
    editor = make(kind)
    rebuilt = build_editor(kind, editor.config())
    rebuilt.load_state_dict(editor.state_dict())
    amounts = torch.randn(16, len(DIRECTIONS))
    torch.testing.assert_close(rebuilt.eval().edit(latents(16), amounts), editor.edit(latents(16), amounts))


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_kinds_are_registered_with_their_nature(kind):
    cls = EDITOR_KINDS[kind]
    assert cls.commutative is (kind != "neuralode")
    assert cls.needs_training is (kind == "neuralode")


# -- NeuralODE ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [4, 8])
@pytest.mark.parametrize("t", [-1.3, 0.5, 2.0])
def test_rk4_integrates_a_linear_field_to_the_matrix_exponential(steps, t):
    """dz/ds = M z has the solution exp(tM) z; RK4 with h = t/steps is accurate to O(h⁴)."""
    rng = torch.Generator().manual_seed(0)
    m = 0.4 * torch.randn(D, D, generator=rng, dtype=torch.float64)
    z = torch.randn(32, D, generator=rng, dtype=torch.float64)
    found = rk4(lambda x: x @ m.T, z, torch.full((32, 1), t, dtype=torch.float64), steps)
    exact = z @ torch.linalg.matrix_exp(t * m).T
    assert (found - exact).norm() / exact.norm() < 1e-3 * (4 / steps) ** 4


def test_rk4_takes_each_rows_own_amount():
    z = latents(3)
    t = torch.tensor([[0.0], [1.0], [-2.0]])
    moved = rk4(lambda x: torch.ones_like(x), z, t, steps=5)  # a constant field: z + t
    torch.testing.assert_close(moved, z + t)


def test_training_edit_equals_edit_for_one_direction_per_row():
    editor = make("neuralode")
    amounts = torch.zeros(64, len(DIRECTIONS))
    amounts[torch.arange(64), torch.arange(64) % len(DIRECTIONS)] = torch.linspace(-1.5, 1.5, 64)
    torch.testing.assert_close(editor.training_edit(latents(64), amounts)[0], editor.edit(latents(64), amounts))


def test_warm_start_gives_pure_directions_on_a_linear_chart():
    """At curvature 0 the chart is linear, so the warm-started constant fields are already the pure directions:
    each moves its own factor by one unit per unit amount and no other."""
    chart = KnownChart(KnownChartConfig(curvature=0.0)).eval()
    editor = NeuralODEEditor(D, list(FACTOR_NAMES))
    z = latents(2048, seed=5)
    editor.warm_start(z, chart.chart(z))
    response = factor_response(chart.true_factors(), editor.eval(), torch.nn.Identity(), latents(256, 6))
    torch.testing.assert_close(response, torch.eye(D), atol=1e-4, rtol=0)


# -- attribute vectors --------------------------------------------------------------------------------------------
def test_group_difference_of_a_linear_chart_follows_the_rows_of_its_matrix():
    """u = A z with z ~ N(0, I): E[z | u_k high] − E[z | u_k low] ∝ Cov(z, u_k) = A[k, :]."""
    chart = KnownChart(KnownChartConfig(curvature=0.0)).eval()
    z = torch.randn(20000, D, generator=torch.Generator().manual_seed(0))
    found = group_difference(z, chart.chart(z))
    rows = chart.fc.weight  # [F, d]: factor k = rows[k] · z
    cosine = (found.T * rows).sum(1) / found.norm(dim=0) / rows.norm(dim=1)
    assert torch.all(cosine > 0.99), cosine


def test_attrdiff_is_calibrated_to_unit_gain():
    chart = KnownChart(KnownChartConfig(curvature=0.5)).eval()
    editor = fit_attrdiff(chart, None, ["x", "hue"])
    signed = (chart.chart(latents(512, 9) + editor.weight[:, 0]) - chart.chart(latents(512, 9)))[:, 0].mean()
    assert abs(signed.item() - 1.0) < 0.05


def test_attrdiff_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        fit_editor("attrdiff", KnownChart(KnownChartConfig()), ["x"], mode="unsupervised")


# -- axes -------------------------------------------------------------------------------------------------------
class PermutedChart(KnownChart):
    """A linear known chart whose axis ``order[j]`` moves factor j alone, by ``gains[j]`` per unit."""

    def __init__(self, order: list[int], gains: list[float]):
        super().__init__(KnownChartConfig(curvature=0.0))
        matrix = torch.zeros(D, D)
        matrix[torch.arange(D), torch.tensor(order)] = torch.tensor(gains)
        self.fc.weight.copy_(matrix)


def test_axes_are_matched_to_the_factor_each_moves():
    order, gains = [4, 2, 0, 5, 1, 3], [1.0, -0.5, 2.0, 0.8, -1.2, 0.3]
    editor = fit_axes(PermutedChart(order, gains), None, list(FACTOR_NAMES), "supervised")
    assert editor.axes == order
    matching = editor.fit_report["matching"]
    assert matching["axis_of"] == dict(zip(FACTOR_NAMES, order, strict=True))
    assert all(abs(share - 1.0) < 1e-6 for share in matching["purity"].values())
    np.testing.assert_allclose(list(matching["signed_gain"].values()), gains, rtol=1e-5)


def test_axes_only_use_the_generators_code_axes():
    """An InfoGAN's noise coordinates are never offered: the axes come from ``code_axes()``."""
    torch.manual_seed(0)
    generator = InfoGAN(InfoGANConfig(codes=4, noise=3, base_channels=8)).eval()
    editor = fit_axes(generator, FactorRegressor().eval(), ["x", "y", "scale"], "supervised", samples=32)
    assert set(editor.axes) <= {0, 1, 2, 3}
    assert fit_axes(generator, None, ["a0", "a1"], "unsupervised").axes == [0, 1]


def test_match_greedy_takes_the_purest_pair_first():
    share = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    assert match_greedy(share, [0, 1]) == {0: 1, 1: 2}
    with pytest.raises(ValueError, match="candidates"):
        match_greedy(share[:1], [0, 1])


@pytest.mark.parametrize("axes", [[0, 0, 1, 2], [0, 1, 2], [0, 1, 2, 6]])
def test_bad_axes_are_refused(axes):
    with pytest.raises(ValueError, match="axes"):
        AxesEditor(D, DIRECTIONS, axes)


# -- trained and fitted through make_editor, bundled, exported ----------------------------------------------------
def test_neuralode_supervised_training_keeps_the_linear_start_and_improves_on_a_curved_chart():
    chart = KnownChart(KnownChartConfig(curvature=1.2)).eval()
    config = EditorTrainConfig(mode="supervised", steps=60, lr=3e-3, regulariser_weight=0.1)
    _, report = make_editor("neuralode", chart, list(FACTOR_NAMES), config, progress=False)
    start = NeuralODEEditor(D, list(FACTOR_NAMES))
    z = torch.randn(4096, D, generator=torch.Generator().manual_seed(1))
    start.warm_start(z, chart.chart(z))
    measured = latents(512, 7)
    before = purity(factor_response(chart.true_factors(), start.eval(), torch.nn.Identity(), measured),
                    list(range(D))).mean()
    assert report["mean_purity"] > before.item() > 0.4


@pytest.fixture(scope="module")
def comparison_bundle(tmp_path_factory):
    """A tiny DCGAN bundle carrying one editor of every new kind, exported (TorchScript exporter: fast)."""
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig(latent_dim=D, base_channels=8)).eval()
    editors = {kind: (make(kind), "supervised", {}) for kind in NEW_KINDS}
    path = write_bundle(tmp_path_factory.mktemp("comparison") / "bundle", name="comparison", version="0.0.1",
                        generator=generator, editors=editors, default_editor="attrdiff",
                        regressor=FactorRegressor().eval(), seed=0)
    return path, export_bundle(path, exporter="torchscript")


def test_every_new_kind_exports_a_verified_graph(comparison_bundle):
    results = comparison_bundle[1]
    written = {r.filename for r in results if r.written}
    assert {"edit.onnx", "edit_axes.onnx", "edit_neuralode.onnx"} <= written


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("batch", [3, 17])
def test_onnx_runtime_serves_each_kind_like_torch(comparison_bundle, kind, batch):
    """The service's ``editor`` field picks any editor of a bundle: the ONNX Runtime engine runs the exported
    graph, at batch sizes the graph was not exported or verified at, and agrees with the torch engine."""
    path, _ = comparison_bundle
    rng = np.random.default_rng(batch)
    z = rng.standard_normal((batch, D)).astype(np.float32)
    amounts = rng.uniform(-1.5, 1.5, (batch, len(DIRECTIONS))).astype(np.float32)
    torch_model = curvedit.load(path, engine="torch")
    ort_model = curvedit.load(path, engine="onnxruntime")
    np.testing.assert_allclose(ort_model.edit(z, amounts, editor=kind), torch_model.edit(z, amounts, editor=kind),
                               rtol=1e-4, atol=1e-5)


def test_the_neuralode_graph_is_unrolled_with_the_dynamo_exporter(comparison_bundle, tmp_path):
    path = shutil.copytree(comparison_bundle[0], tmp_path / "bundle")
    results = export_bundle(path, exporter="dynamo")
    assert [r.written for r in results if r.filename == "edit_neuralode.onnx"] == [True]


@pytest.fixture(scope="module")
def served(comparison_bundle):
    from curvedit.client import Client
    from curvedit.service.background import BackgroundServer
    from curvedit.service.config import ServeConfig

    config = ServeConfig(port=0, http_port=-1, metrics_port=0, models=(str(comparison_bundle[0]),),
                         max_batch_size=8, max_queue_delay_ms=5)
    with BackgroundServer(config) as server, Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        yield client


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_the_service_serves_each_kind_by_its_editor_field(served, comparison_bundle, kind):
    model = curvedit.load(comparison_bundle[0], engine="torch")
    z = model.sample(11, seed=4)  # more rows than one batch: the batcher splits them
    result = served.edit(latents=z, edits={"x": 1.0, "rotation": -0.5}, editor=kind)
    np.testing.assert_allclose(result.latents, model.edit(z, {"x": 1.0, "rotation": -0.5}, editor=kind),
                               rtol=1e-4, atol=1e-5)
