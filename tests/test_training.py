"""A few steps of each training loop on tiny models: the loss falls, resumable runs resume."""

import pytest
import torch

from curvedit.models.editors import DeCurvEd
from curvedit.models.generator import Generator, GeneratorConfig
from curvedit.models.regressor import FactorRegressor
from curvedit.models.renderer import RenderedShapes
from curvedit.models.train_editor import EditorTrainConfig, train_editor
from curvedit.models.train_generator import GANTrainConfig, train_generator


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Generator(GeneratorConfig(latent_dim=4, base_channels=8)).eval()


@pytest.fixture(scope="module")
def regressor():
    """A regressor briefly fitted to renders, so supervised losses carry a real signal."""
    torch.manual_seed(0)
    model = FactorRegressor(channels=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = RenderedShapes(seed=0)
    for _ in range(60):
        images, factors = data.next_batch(32)
        loss = (model(images) - factors).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("mode", ["unsupervised", "supervised"])
def test_editor_training_loss_falls(generator, regressor, mode):
    torch.manual_seed(0)
    directions = ["x", "y", "scale"] if mode == "supervised" else ["d0", "d1", "d2"]
    editor = DeCurvEd(4, directions, hidden=16, layers=2)
    config = EditorTrainConfig(mode=mode, steps=200, batch_size=32, lr=3e-3, amount_min=0.5, amount_max=1.5)
    report = train_editor(editor, generator, config, regressor=regressor, progress=False)
    first, last = report["losses"][0], report["losses"][-1]
    assert last < first, report["losses"]
    key = "reconstructor_accuracy" if mode == "unsupervised" else "mean_purity"
    assert 0.0 <= report[key] <= 1.0


def test_supervised_training_needs_a_regressor(generator):
    with pytest.raises(ValueError, match="regressor"):
        train_editor(DeCurvEd(4, ["x"]), generator, EditorTrainConfig(steps=1), regressor=None, progress=False)


def test_supervised_directions_must_be_factors(generator, regressor):
    with pytest.raises(ValueError, match="factor names"):
        train_editor(DeCurvEd(4, ["smile"]), generator, EditorTrainConfig(steps=1), regressor, progress=False)


def test_generator_run_resumes_from_its_checkpoint(tmp_path):
    config = GeneratorConfig(latent_dim=4, base_channels=8)
    straight = train_generator(tmp_path / "a", config, GANTrainConfig(steps=6, batch_size=8, checkpoint_every=3),
                               progress=False)
    train_generator(tmp_path / "b", config, GANTrainConfig(steps=3, batch_size=8, checkpoint_every=3),
                    progress=False)
    resumed = train_generator(tmp_path / "b", config, GANTrainConfig(steps=6, batch_size=8, checkpoint_every=3),
                              progress=False)
    for name in ("checkpoint.pt", "samples.png", "generator.safetensors"):
        assert (tmp_path / "b" / name).is_file()
    z = torch.randn(4, 4)
    torch.testing.assert_close(resumed(z), straight(z))


def test_generator_run_refuses_a_different_config(tmp_path):
    train_generator(tmp_path, GeneratorConfig(latent_dim=4, base_channels=8),
                    GANTrainConfig(steps=1, batch_size=4, checkpoint_every=1), progress=False)
    with pytest.raises(ValueError, match="another --out"):
        train_generator(tmp_path, GeneratorConfig(latent_dim=5, base_channels=8),
                        GANTrainConfig(steps=2, batch_size=4), progress=False)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_interrupted_editor_training_resumes_to_the_same_weights(generator, regressor, tmp_path, monkeypatch,
                                                                 mode):
    from curvedit.models import train_editor as module

    directions = ["x", "y", "scale"] if mode == "supervised" else ["d0", "d1", "d2"]
    config = EditorTrainConfig(mode=mode, steps=30, batch_size=16, lr=3e-3)

    def fresh():
        torch.manual_seed(1)
        return DeCurvEd(4, directions, hidden=16, layers=2, mixing=mode == "supervised")

    straight = fresh()
    expected = train_editor(straight, generator, config, regressor=regressor, progress=False)

    checkpoint = tmp_path / "editor.pt"
    sample, calls = module._sample_step, []

    def sample_then_die(*args):
        calls.append(1)
        if len(calls) > 25:  # dies during step 26; the last save was after step 20
            raise Interrupted
        return sample(*args)

    monkeypatch.setattr(module, "_sample_step", sample_then_die)
    with pytest.raises(Interrupted):
        train_editor(fresh(), generator, config, regressor=regressor, progress=False, checkpoint=checkpoint,
                     checkpoint_every=10)
    monkeypatch.setattr(module, "_sample_step", sample)
    assert torch.load(checkpoint, weights_only=True)["step"] == 20
    resumed = fresh()
    report = train_editor(resumed, generator, config, regressor=regressor, progress=False, checkpoint=checkpoint,
                          checkpoint_every=10)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6)
    assert report["losses"] == pytest.approx(expected["losses"], abs=1e-6)


def test_a_checkpoint_of_another_run_is_refused(generator, regressor, tmp_path):
    checkpoint = tmp_path / "editor.pt"
    config = EditorTrainConfig(steps=2, batch_size=8)
    train_editor(DeCurvEd(4, ["x"], hidden=8, layers=1), generator, config, regressor=regressor, progress=False,
                 checkpoint=checkpoint)
    with pytest.raises(ValueError, match="delete it to start afresh"):
        train_editor(DeCurvEd(4, ["x"], hidden=8, layers=1), generator, EditorTrainConfig(steps=3, batch_size=8),
                     regressor=regressor, progress=False, checkpoint=checkpoint)


def test_a_checkpoint_made_on_another_generator_is_refused(generator, regressor, tmp_path):
    checkpoint = tmp_path / "editor.pt"
    config = EditorTrainConfig(steps=2, batch_size=8)
    train_editor(DeCurvEd(4, ["x"], hidden=8, layers=1), generator, config, regressor=regressor, progress=False,
                 checkpoint=checkpoint)
    torch.manual_seed(1)
    retrained = Generator(GeneratorConfig(latent_dim=4, base_channels=8)).eval()
    with pytest.raises(ValueError, match="generator weights"):
        train_editor(DeCurvEd(4, ["x"], hidden=8, layers=1), retrained, config, regressor=regressor,
                     progress=False, checkpoint=checkpoint)
