"""The alignment map on its own: identity at start, edit/translate commutation exact by construction for any
parameters, training lowers the factor disagreement, and a bundle stores the map under its checksums."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_tiny_vae_bundle, randomize

import curvedit
from curvedit.bundle import BundleError, add_alignment, load_bundle
from curvedit.models.alignment import (
    AlignmentTrainConfig,
    LatentAlignment,
    check_alignable,
    train_alignment,
    translate_latents,
)
from curvedit.models.editors import DeCurvEd

DIRECTIONS = ["x", "y", "scale", "rotation"]


def _editors():
    source = randomize(DeCurvEd(8, DIRECTIONS, hidden=16, layers=4, mixing=True), seed=1).eval()
    target = randomize(DeCurvEd(8, DIRECTIONS, hidden=16, layers=4, mixing=True), seed=2).eval()
    return source, target


def test_a_new_alignment_is_the_identity():
    v = torch.randn(5, 8)
    assert torch.equal(LatentAlignment(8, DIRECTIONS)(v), v)


@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_edit_then_translate_equals_translate_then_edit_for_any_map(seed):
    """In float64, so what is left is rounding: the construction itself is exact."""
    source, target = (editor.double() for editor in _editors())
    alignment = randomize(LatentAlignment(8, DIRECTIONS), std=0.7, seed=seed).double()
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    amounts = torch.randn(64, 4, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    translated = translate_latents(source, alignment, target, z)
    edit_first = translate_latents(source, alignment, target, source.edit(z, amounts))
    translate_first = target.edit(translated, amounts)
    assert (edit_first - translate_first).norm() / (translate_first - translated).norm() < 1e-10


@pytest.mark.parametrize("seed", [0, 1])
def test_the_inverse_map_translates_back_exactly(seed):
    source, target = (editor.double() for editor in _editors())  # random flows: float64 keeps the check exact
    alignment = randomize(LatentAlignment(8, DIRECTIONS), seed=seed).double()
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = torch.randn(64, 8, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
    torch.testing.assert_close(alignment.inverse(alignment(v)), v)
    there = translate_latents(source, alignment, target, z)
    torch.testing.assert_close(translate_latents(target, alignment, source, there, inverse=True), z)


def test_editors_over_different_directions_are_refused():
    source, _ = _editors()
    other = DeCurvEd(8, ["x", "y", "scale", "hue"], hidden=16, layers=4)
    with pytest.raises(ValueError, match="same directions"):
        check_alignable(source, other)


@torch.no_grad()
def _disagreement(source, target, alignment) -> float:
    z = torch.randn(512, 8, generator=torch.Generator().manual_seed(99))
    wanted = source[2](source[0](z))
    got = target[2](target[0](translate_latents(source[1], alignment, target[1], z)))
    return (got - wanted).abs().mean().item()


class _ShiftedChart(torch.nn.Module):
    """A "generator" that shows ``f⁻¹(f(z) + c)``: the source's domain seen through a constant shift of the
    editor's chart, so the best map is ``A(v) = v − c`` — a shift, which the alignment can represent exactly."""

    def __init__(self, editor: DeCurvEd, shift: torch.Tensor):
        super().__init__()
        self.editor, self.shift = editor, shift

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.editor.decode(self.editor.encode(z) + self.shift)


def test_training_finds_a_shift_between_two_charts():
    """Source images are the latents themselves, read by one linear, invertible "regressor"; the target renders
    ``f⁻¹(f(z) + c)``. The identity map disagrees by the shift; training must remove nearly all of it, and — the
    readings determining z — find the shift itself."""
    reader = torch.nn.Linear(8, 8)
    with torch.no_grad():
        reader.weight.copy_(torch.randn(8, 8, generator=torch.Generator().manual_seed(4)))
    editor = randomize(DeCurvEd(8, DIRECTIONS, hidden=16, layers=2, mixing=True), std=0.1, seed=1).eval()
    shift = torch.tensor([0.8, -0.5, 0.3, 0.6, 0.4, -0.7, 0.2, 0.5])
    source, target = (torch.nn.Identity(), editor, reader), (_ShiftedChart(editor, shift), editor, reader)
    config = AlignmentTrainConfig(steps=300, batch_size=64, lr=1e-2, clip=10.0, prior_weight=0.0)
    alignment, report = train_alignment(source, target, config, progress=False)
    before = _disagreement(source, target, LatentAlignment(8, DIRECTIONS))
    after = _disagreement(source, target, alignment)
    assert after < 0.1 * before, (before, after)
    torch.testing.assert_close(alignment.shift, -shift[:4], atol=0.1, rtol=0)
    torch.testing.assert_close(alignment.rest_bias, -shift[4:], atol=0.1, rtol=0)
    assert len(report["losses"]) == 6 and report["config"]["steps"] == 300


@pytest.fixture()
def aligned_bundle(tmp_path):
    path = make_tiny_vae_bundle(tmp_path / "tinyvae")
    alignment = randomize(LatentAlignment(8, DIRECTIONS), seed=3)
    entry = {"source_editor": "decurved", "training": {},
             "target": {"name": "shapes-vae", "digest": "0" * 64, "editor": "decurved"}}
    add_alignment(path, "shapes-vae", alignment, entry)
    return path, alignment


def test_a_bundle_stores_its_alignment_under_its_checksums(aligned_bundle):
    path, alignment = aligned_bundle
    bundle = load_bundle(path)
    assert list(bundle.alignments) == ["shapes-vae"]
    for name, tensor in alignment.state_dict().items():
        assert torch.equal(bundle.alignments["shapes-vae"].state_dict()[name], tensor)
    assert "alignment_shapes-vae.safetensors" in bundle.manifest["files"]
    with open(path / "alignment_shapes-vae.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(path)


def test_editing_the_alignment_entry_by_hand_is_caught(aligned_bundle):
    path, _ = aligned_bundle
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["alignments"]["shapes-vae"]["target"]["name"] = "shapes32"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)


def test_translate_refuses_an_unknown_target_and_a_changed_target(aligned_bundle, tmp_path):
    path, _ = aligned_bundle
    model = curvedit.load(path, engine="torch")
    assert model.alignments == ["shapes-vae"]
    z = model.sample(2, seed=0)
    with pytest.raises(ValueError, match=r"no alignment to 'faces-avatar'.*translate to \['shapes-vae'\]"):
        model.translate(z, to="faces-avatar")
    # The map was recorded against a digest of zeros: the shipped shapes-vae is another bundle.
    with pytest.raises(ValueError, match="was trained against its bundle 000000000000"):
        model.translate(z, to="shapes-vae")
    plain = curvedit.load(make_tiny_vae_bundle(tmp_path / "plain"), engine="torch")
    with pytest.raises(ValueError, match="holds no alignment"):
        plain.translate(z, to="shapes-vae")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 7), np.float32), "latent dim is 8"),
    (np.full((1, 8), np.nan, np.float32), "NaN"),
    (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
    (np.zeros((2, 5, 5, 3), np.uint8), "32"),
])
def test_translate_refuses_bad_input_with_the_fix(aligned_bundle, bad, message):
    model = curvedit.load(aligned_bundle[0], engine="torch")
    with pytest.raises(ValueError, match=message):
        model.translate(bad, to="shapes-vae")


def test_a_copied_bundle_keeps_its_alignment(aligned_bundle, tmp_path):
    copy = shutil.copytree(aligned_bundle[0], tmp_path / "copy")
    assert curvedit.load(copy, engine="torch").alignments == ["shapes-vae"]
