"""Editor training: editors learn on a generator with real signal (and an optimiser that never steps does not),
bad settings are refused, interrupted runs resume to the same weights."""

import pytest
import torch

from curvedit.models.editors import DeCurvEd
from curvedit.models.fit_editors import make_editor
from curvedit.models.generator import Generator, GeneratorConfig
from curvedit.models.known_chart import KnownChart, KnownChartConfig
from curvedit.models.regressor import FactorRegressor
from curvedit.models.renderer import FACTOR_NAMES, RenderedShapes
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


# --- Editors learn: on the known-chart generator, whose true factors are exact and whose renders change with z ---
#
# Each test trains the way `curvedit train editor` / `curvedit eval` do (``make_editor``: DeCurvEd with its mixing
# layer, ``factor_reader`` for the true factors) and is paired with a negative control: the same loop with lr = 0,
# whose optimiser never moves a weight. The bars sit between the two, far from both, as measured over seeds 0-7
# with ``chart_training_report`` (2-core CPU, one torch thread, torch 2.13):
#
# supervised, curvature 1.2, all six factors, 600 steps: mean purity (512 held-out latents, ±1 edits)
#     lr 3e-3: 0.699-0.707 (mean 0.702) | lr 0 (the warm start, the least-squares linear chart): 0.503-0.513
#     For scale: chance is 1/6, and the best purity any linear editor reaches on this chart is 0.527
#     (``linear_ceiling``). Bar 0.60: 0.09 above the best untrained seed, 0.10 below the worst trained one; the
#     seed spread is 0.01, and float noise is smaller still (two threads instead of one: 0.700 for 0.704).
# unsupervised, curvature 0.5, three directions, 200 steps: reconstructor accuracy on 512 held-out pairs
#     lr 1e-3: 0.967-0.992 (mean 0.982) | lr 0: 0.314-0.359 (mean 0.339), i.e. chance (1/3) within binomial
#     noise (sd 0.021). Bar: chance + 0.30 = 0.633, 14 sd above chance and 0.33 below the worst trained seed.
#     (Before the renderer kept its gradients finite, a plain DeCurvEd (no mixing layer) went NaN within 200
#     steps in 4 of 8 seeds and ended at chance.)
SUPERVISED_PURITY_BAR = 0.60
UNSUPERVISED_MARGIN_OVER_CHANCE = 0.30
LEARNING_RUNS = {  # mode → (curvature, directions, editor options, steps, learning rate)
    "supervised": (1.2, list(FACTOR_NAMES), {"hidden": 32, "layers": 4}, 600, 3e-3),
    "unsupervised": (0.5, ["d0", "d1", "d2"], {"hidden": 16, "layers": 2}, 200, 1e-3),
}


def chart_training_report(mode: str, trained: bool, seed: int = 0) -> dict:
    """Train a DeCurvEd editor on a known-chart generator as in ``LEARNING_RUNS`` (lr 0 unless ``trained``);
    returns the training report with its held-out measure."""
    curvature, directions, options, steps, lr = LEARNING_RUNS[mode]
    chart = KnownChart(KnownChartConfig(curvature=curvature))
    config = EditorTrainConfig(mode=mode, steps=steps, batch_size=32, lr=lr if trained else 0.0,
                               amount_min=0.5, amount_max=1.5, seed=seed)
    torch.manual_seed(seed)  # the editor's initial weights
    _, report = make_editor("decurved", chart, directions, config, options=options, progress=False)
    return report


LEARNS = pytest.mark.parametrize("trained", [True, False], ids=["trained", "optimiser-never-steps"])


@pytest.fixture
def one_thread():
    """Train on one thread: these ops are too small to share, and on a busy 2-core machine two threads waiting
    on each other at every op made a 4 s run take minutes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@LEARNS
def test_supervised_decurved_learns_purity_beyond_its_linear_start(one_thread, trained):
    """Supervised training starts at the best linear chart (the warm start) and must bend it towards the true,
    curved one: purity above the bar, which the untrained warm start stays below."""
    purity = chart_training_report("supervised", trained)["mean_purity"]
    assert (purity > SUPERVISED_PURITY_BAR) is trained, purity


@pytest.mark.slow
@LEARNS
def test_unsupervised_directions_become_distinguishable(one_thread, trained):
    """The published objective: after training, the reconstructor tells on held-out image pairs which direction
    moved, far above chance; an untrained one is at chance."""
    report = chart_training_report("unsupervised", trained)
    chance = 1 / len(LEARNING_RUNS["unsupervised"][1])
    accuracy = report["reconstructor_accuracy"]
    assert (accuracy > chance + UNSUPERVISED_MARGIN_OVER_CHANCE) is trained, accuracy


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


def test_each_family_trains_through_the_recipe_its_training_module_registers(tmp_path):
    from curvedit.models import all_trainers  # noqa: F401
    from curvedit.models.families import TRAINING_RECIPES
    from curvedit.models.train_infogan import train_infogan
    from curvedit.models.train_pixelcnn import train_pixelcnn
    from curvedit.models.vae import train_vae

    recipes = {"dcgan": train_generator, "infogan": train_infogan, "pixelcnn": train_pixelcnn, "vae": train_vae}
    assert dict(TRAINING_RECIPES) == recipes
    config = GeneratorConfig(latent_dim=4, base_channels=8)
    trained = Generator.train_recipe(tmp_path, config, GANTrainConfig(steps=1, batch_size=4), progress=False)
    assert isinstance(trained, Generator) and (tmp_path / "generator.safetensors").is_file()
    with pytest.raises(ValueError, match="no built-in training recipe"):
        KnownChart.train_recipe(tmp_path, KnownChartConfig(), None, progress=False)


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
