"""DeCurvEd edits: they commute, invert exactly by negation, and follow curved paths."""

import itertools

import pytest
import torch
from conftest import randomize

from curvedit.models.editors import DeCurvEd, build_editor


@pytest.fixture(scope="module")
def editor():
    return randomize(DeCurvEd(10, ["a", "b", "c", "d"], hidden=24, layers=6), std=0.15, seed=1).eval()


def one_hot(n: int, k: int, amount: float, count: int = 4) -> torch.Tensor:
    t = torch.zeros(n, count)
    t[:, k] = amount
    return t


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_edits_commute_in_every_order(editor, order):
    z = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    amounts = [0.8, -1.3, 2.1]
    reference = editor.edit(z, torch.tensor([[*amounts, 0.0]]).expand(64, 4))
    current = z
    for k in order:
        current = editor.edit(current, one_hot(64, k, amounts[k]))
    relative = (current - reference).norm() / (reference - z).norm()
    assert relative < 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_negative_amount_undoes_an_edit(editor, seed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(32, 10, generator=gen)
    t = torch.randn(32, 4, generator=gen) * 2
    back = editor.edit(editor.edit(z, t), -t)
    torch.testing.assert_close(back, z, rtol=1e-5, atol=1e-5)


def test_edit_path_is_curved(editor):
    z = torch.randn(16, 10, generator=torch.Generator().manual_seed(3))
    start, middle, end = (editor.edit(z, one_hot(16, 0, a)) for a in (0.0, 1.0, 2.0))
    deviation = (middle - 0.5 * (start + end)).norm(dim=1) / (end - start).norm(dim=1)
    assert deviation.mean() > 1e-3  # a linear editor would give exactly 0


def test_zero_amount_is_identity(editor):
    z = torch.randn(8, 10)
    torch.testing.assert_close(editor.edit(z, torch.zeros(8, 4)), z, rtol=0, atol=1e-5)


def test_config_rebuilds_the_same_editor(editor):
    rebuilt = build_editor("decurved", editor.config())
    rebuilt.load_state_dict(editor.state_dict())
    z, t = torch.randn(5, 10), torch.randn(5, 4)
    assert torch.equal(rebuilt.edit(z, t), editor.edit(z, t))


@pytest.mark.parametrize(("directions", "message"), [
    ([], r"need 1\.\.10 directions \(K <= latent dim\), got 0"),
    ([f"d{k}" for k in range(11)], r"need 1\.\.10 directions \(K <= latent dim\), got 11"),
    (["a", "a"], r"direction names must be unique, got \['a', 'a'\]"),
])
def test_bad_directions_are_refused(directions, message):
    with pytest.raises(ValueError, match=message):
        DeCurvEd(10, directions)


def test_unknown_kind_lists_the_known():
    with pytest.raises(ValueError, match=r"unknown editor kind 'nope'; known kinds: \[.*'decurved'"):
        build_editor("nope", {})
