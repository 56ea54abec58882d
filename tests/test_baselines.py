"""Baseline editors (linear, GANSpace, SeFa, RBF): hand-computable cases, bundle round trips, training CLI."""

import math
import shutil

import numpy as np
import pytest
import torch
from numerics import EPS

import curvedit
from curvedit.bundle import add_editor, load_bundle
from curvedit.cli import main
from curvedit.evaluation.metrics import commutation_error, round_trip_error
from curvedit.models.known_chart import KnownChart, KnownChartConfig
from curvedit.models.linear_editors import (
    GANSpaceEditor,
    LinearEditor,
    SeFaEditor,
    gram_schmidt,
    pca_directions,
    sefa_directions,
)
from curvedit.models.rbf_editor import RBFEditor


def orthogonal(n: int, seed: int) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=rng, dtype=torch.float64))[0]


def assert_same_axes(found: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5):
    """Columns equal up to sign (eigenvectors and principal axes have none)."""
    cosines = (found.double() * expected.double()).sum(0) / found.double().norm(dim=0) / expected.norm(dim=0)
    assert torch.allclose(cosines.abs(), torch.ones_like(cosines), atol=tol), cosines


def test_sefa_directions_are_the_top_eigenvectors_of_a_known_matrix():
    u, v = orthogonal(12, 0)[:, :5], orthogonal(5, 1)
    weight = u @ torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ v.T  # [12, 5]
    found = sefa_directions(weight.float(), 3)
    assert_same_axes(found, v[:, :3])  # AᵀA = V diag(s²) Vᵀ: top eigenvectors are V's first columns


def test_sefa_fit_uses_the_generators_first_linear_layer():
    generator = KnownChart(KnownChartConfig(curvature=0.5))
    editor = SeFaEditor.fit(generator, ["a", "b"])
    _, vectors = np.linalg.eigh((generator.fc.weight.T @ generator.fc.weight).double().numpy())
    assert_same_axes(editor.weight, torch.from_numpy(vectors[:, ::-1][:, :2].copy()))
    assert editor.needs_training is False


def test_ganspace_recovers_a_known_principal_axis():
    z = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0))
    axes = orthogonal(3, 2).float()
    # Features: the projection on axes[:, 0] with 10× the spread of the others, embedded nonlinearly-free in R⁵.
    coords = z @ axes * torch.tensor([10.0, 1.0, 0.1])
    features = torch.cat([coords, torch.zeros(4000, 2)], dim=1) @ orthogonal(5, 3).float()
    found = pca_directions(z, features, 2)
    assert_same_axes(found, axes[:, :2].double(), tol=1e-3)


def test_ganspace_fit_on_a_generator_gives_unit_directions():
    editor = GANSpaceEditor.fit(KnownChart(KnownChartConfig(curvature=0.5)), ["a", "b", "c"], samples=256)
    assert torch.allclose(editor.weight.norm(dim=0), torch.ones(3), atol=1e-5)


def test_linear_orthonormal_option_gives_orthonormal_columns():
    editor = LinearEditor(8, list("abcde"), orthonormal=True)
    with torch.no_grad():
        editor.weight.mul_(torch.linspace(0.1, 3.0, 5)).add_(0.3)  # far from orthonormal underneath
    basis = editor.basis()
    assert torch.allclose(basis.T @ basis, torch.eye(5), atol=1e-5)
    free = LinearEditor(8, list("abcde"))
    with torch.no_grad():
        free.weight.add_(0.3)
    assert not torch.allclose(free.basis().T @ free.basis(), torch.eye(5), atol=1e-2)


def test_gram_schmidt_keeps_the_first_column_direction():
    m = torch.randn(6, 3)
    q = gram_schmidt(m)
    assert torch.allclose(q[:, 0], m[:, 0] / m[:, 0].norm(), atol=1e-6)


@pytest.fixture
def rbf():
    return RBFEditor(5, ["a", "b", "c"], dipoles=3, steps=6, seed=4).eval()


@pytest.mark.parametrize("k", [0, 1, 2])
def test_rbf_gradient_and_step_match_autograd(rbf, k):
    z = torch.randn(32, 5, generator=torch.Generator().manual_seed(k)).requires_grad_(True)
    rbf.potential(z, k).sum().backward()
    with torch.no_grad():
        grad = rbf.gradient(z, k)
        assert torch.allclose(grad, z.grad, atol=1e-6, rtol=1e-5)
        expected = z.grad / z.grad.norm(dim=1, keepdim=True)
        assert torch.allclose(rbf.step_direction(z, k), expected, atol=1e-5)


def test_rbf_edit_runs_under_inference_mode_and_moves_by_the_amount(rbf):
    z = torch.randn(16, 5, generator=torch.Generator().manual_seed(9))
    amounts = torch.zeros(16, 3)
    amounts[:, 1] = 1e-3  # one tiny step-set: the path is straight, so displacement ≈ the amount
    with torch.inference_mode():
        edited = rbf.edit(z, amounts)
    # Each step rounds z once (≤ ε·|z| per element, √d of them); the chord of a path of length 1e-3 is shorter
    # than it by only O(curvature² · 1e-9).
    bound = rbf.steps * math.sqrt(z.shape[1]) * EPS[torch.float32] * z.abs().max().item()
    assert torch.allclose((edited - z).norm(dim=1), torch.full((16,), 1e-3), rtol=0, atol=bound)


def test_rbf_editor_is_not_commutative_or_exactly_invertible(rbf):
    z = torch.randn(256, 5, generator=torch.Generator().manual_seed(5))
    assert commutation_error(rbf.edit, z, 3, 0, 1, 1.5, 1.5) > 1e-2
    assert round_trip_error(rbf.edit, z, 3, 0, 1.5) > 1e-3
    assert RBFEditor.commutative is False


def new_editor(kind: str, latent_dim: int, generator):
    directions = ["x", "y", "scale"]
    if kind == "linear":
        editor = LinearEditor(latent_dim, directions, orthonormal=True, seed=3)
        with torch.no_grad():
            editor.weight.add_(0.2)
        return editor
    if kind == "ganspace":
        return GANSpaceEditor.fit(generator, directions, samples=128)
    if kind == "sefa":
        return SeFaEditor.fit(generator, directions)
    editor = RBFEditor(latent_dim, directions, seed=2)
    with torch.no_grad():
        editor.support.add_(0.1)
        editor.log_gamma.add_(0.2)
    return editor


@pytest.mark.parametrize("kind", ["linear", "ganspace", "sefa", "rbf"])
def test_bundle_round_trip(tiny_bundle, tmp_path, kind):
    path = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, path)
    bundle = load_bundle(path)
    editor = new_editor(kind, bundle.generator.config.latent_dim, bundle.generator).eval()
    add_editor(path, kind, editor, "supervised", {"note": "test"})
    loaded = load_bundle(path)
    assert loaded.manifest["editors"][kind]["needs_training"] == editor.needs_training
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    amounts = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.editors[kind].edit(z, amounts), editor.edit(z, amounts))
    model = curvedit.load(path, engine="torch")
    served = model.edit(z.numpy(), {"x": 0.5, "scale": -1.0}, editor=kind)
    expected = editor.edit(z, torch.tensor([[0.5, 0.0, -1.0]]).expand(8, 3)).detach().numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("method", "mode"), [
    ("linear", "supervised"), ("linear", "unsupervised"), ("rbf", "supervised"), ("rbf", "unsupervised"),
    ("ganspace", "supervised"), ("ganspace", "unsupervised"), ("sefa", "supervised"), ("sefa", "unsupervised"),
    ("decurved", "supervised"),
])
def test_train_editor_cli_every_kind(tiny_bundle, tmp_path, method, mode):
    path = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, path)
    code = main(["train", "editor", "--model", str(path), "--method", method, "--mode", mode, "--steps", "2",
                 "--directions", "3", "--name", "new", "--measure-samples", "32"])
    assert code == 0
    entry = load_bundle(path).manifest["editors"]["new"]
    assert entry["kind"] == method and entry["mode"] == mode
    assert entry["needs_training"] is (method not in ("ganspace", "sefa"))
    expected = ["x", "y", "scale"] if mode == "supervised" else ["d0", "d1", "d2"]
    assert [d["name"] for d in entry["directions"]] == expected


@pytest.mark.parametrize(("flags", "mixing"), [([], True), (["--no-mixing"], False)])
def test_decurved_trains_with_a_mixing_layer_unless_told_not_to(tiny_bundle, tmp_path, flags, mixing):
    path = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, path)
    assert main(["train", "editor", "--model", str(path), "--method", "decurved", "--steps", "2",
                 "--name", "new", *flags]) == 0
    bundle = load_bundle(path)
    assert bundle.manifest["editors"]["new"]["config"]["mixing"] is mixing
    assert (bundle.editors["new"].flow.mixing is not None) is mixing


def test_no_mixing_is_refused_for_other_kinds(tiny_bundle, capsys):
    assert main(["train", "editor", "--model", str(tiny_bundle), "--method", "linear", "--no-mixing"]) == 2
    assert "--no-mixing applies to --method decurved only" in capsys.readouterr().err


def test_train_editor_cli_checkpoint_makes_a_rerun_resume(tiny_bundle, tmp_path):
    path, checkpoint = tmp_path / "bundle", tmp_path / "editor.pt"
    shutil.copytree(tiny_bundle, path)
    command = ["train", "editor", "--model", str(path), "--method", "linear", "--steps", "3", "--name", "new",
               "--checkpoint", str(checkpoint)]
    assert main(command) == 0
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 3
    # Mark the saved weights: a rerun that really resumes (at step 3 of 3, nothing left to train) ships them.
    state["editor"] = {key: torch.full_like(value, 0.25) for key, value in state["editor"].items()}
    torch.save(state, checkpoint)
    assert main(command) == 0
    for value in load_bundle(path).editors["new"].state_dict().values():
        assert torch.all(value == 0.25)
