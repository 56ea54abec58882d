"""The InfoGAN family and the recipes of the models trained under constraints (β-VAE, InfoGAN)."""

import pytest
import torch

from curvedit.bundle import load_bundle, write_bundle
from curvedit.models.families import GENERATOR_FAMILIES, build_generator
from curvedit.models.infogan import InfoDiscriminator, InfoGAN, InfoGANConfig, InfoGANTrainConfig, info_loss
from curvedit.models.labelled_editors import AxesEditor
from curvedit.models.train_infogan import debias, train_infogan
from curvedit.recipes import RECIPES

TINY = InfoGANConfig(codes=3, noise=2, base_channels=8)


def tiny_training(steps: int, **overrides) -> InfoGANTrainConfig:
    return InfoGANTrainConfig(steps=steps, batch_size=8, checkpoint_every=2, **overrides)


def test_infogan_is_a_registered_family_with_codes_then_noise():
    generator = build_generator("infogan", TINY.to_dict())
    assert isinstance(generator, InfoGAN) and GENERATOR_FAMILIES["infogan"] is InfoGAN
    assert generator.latent_dim == 5 and generator.code_axes() == [0, 1, 2]
    assert generator.decode(torch.randn(4, 5)).shape == (4, 3, 32, 32)
    assert generator.linear_map().shape == (16 * 32, 5)  # SeFa reads the first linear layer, as for the DCGAN


@pytest.mark.parametrize("bad", [{"codes": 0}, {"noise": -1}])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError, match="codes"):
        InfoGANConfig(**bad)


def test_info_loss_is_half_the_mean_squared_code_error():
    codes = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert info_loss(codes, codes).item() == 0.0
    assert info_loss(torch.zeros(2, 2), codes).item() == pytest.approx(0.5 * (1 + 4 + 0.25) / 4)


def test_q_head_reads_codes_from_images():
    critic = InfoDiscriminator(codes=3, base_channels=8)
    score, codes = critic(torch.randn(5, 3, 32, 32))
    assert score.shape == (5,) and codes.shape == (5, 3)


def test_infogan_run_resumes_to_the_same_weights(tmp_path):
    straight = train_infogan(tmp_path / "a", TINY, tiny_training(4), progress=False)
    train_infogan(tmp_path / "b", TINY, tiny_training(2), progress=False)
    resumed = train_infogan(tmp_path / "b", TINY, tiny_training(4), progress=False)
    for name in ("checkpoint.pt", "samples.png", "codes.png", "generator.safetensors"):
        assert (tmp_path / "b" / name).is_file()
    z = torch.randn(3, TINY.latent_dim)
    torch.testing.assert_close(resumed(z), straight(z))


@pytest.mark.parametrize("steps", [100, 700, 2000])
def test_debiased_ema_of_constant_iterates_is_that_constant(steps):
    """If every trained iterate is θ, the EMA is d^t·θ₀ + (1 − d^t)·θ; debiasing returns θ, not the blend."""
    torch.manual_seed(0)
    initial, trained = InfoGAN(TINY), InfoGAN(TINY)
    ema, decay = InfoGAN(TINY), 0.999
    with torch.no_grad():
        for p_ema, p0, p in zip(ema.parameters(), initial.parameters(), trained.parameters(), strict=True):
            p_ema.copy_(decay**steps * p0 + (1 - decay**steps) * p)
    debias(ema, initial.state_dict(), decay, steps)
    for p_ema, p in zip(ema.parameters(), trained.parameters(), strict=True):
        torch.testing.assert_close(p_ema, p, rtol=1e-4, atol=1e-5)


def test_a_run_can_be_finished_at_its_checkpoint_but_not_changed(tmp_path):
    """The learning rate is constant, so a run stopped at a checkpoint may end there; other settings may not
    change, and a run cannot end before its checkpoint."""
    train_infogan(tmp_path, TINY, tiny_training(4), progress=False)
    (tmp_path / "generator.safetensors").unlink()
    train_infogan(tmp_path, TINY, tiny_training(4), progress=False)  # nothing left to train: writes the weights
    assert (tmp_path / "generator.safetensors").is_file()
    with pytest.raises(ValueError, match="another InfoGAN"):
        train_infogan(tmp_path, TINY, tiny_training(4, info_weight=0.5), progress=False)
    with pytest.raises(ValueError, match="past the 2 steps"):
        train_infogan(tmp_path, TINY, tiny_training(2), progress=False)


@pytest.mark.slow
def test_the_information_term_is_what_makes_codes_readable(tmp_path):
    """Q's loss falls when the information term is on and stays at chance (½ E c² = 0.5) when it is off."""
    def final_info(weight: float) -> float:
        train_infogan(tmp_path / str(weight), TINY, tiny_training(200, info_weight=weight), progress=False)
        log = torch.load(tmp_path / str(weight) / "checkpoint.pt", weights_only=True)["log"]
        return log[-1][2] if log else float("nan")

    torch.manual_seed(0)
    assert final_info(1.0) < 0.8 * final_info(0.0)


def test_a_bundle_round_trips_an_infogan_and_its_axes(tmp_path):
    torch.manual_seed(0)
    generator = InfoGAN(TINY).eval()
    editor = AxesEditor(TINY.latent_dim, ["x", "y"], [2, 0])
    path = write_bundle(tmp_path / "b", name="tiny-infogan", version="0", generator=generator,
                        editors={"axes": (editor, "supervised", {})}, default_editor="axes")
    bundle = load_bundle(path)
    z = torch.randn(4, TINY.latent_dim)
    torch.testing.assert_close(bundle.generator(z), generator(z))
    assert bundle.editors["axes"].axes == [2, 0]
    assert torch.equal(bundle.editors["axes"].edit(z, torch.tensor([[1.0, 0.0]] * 4))[:, 2], z[:, 2] + 1)


@pytest.mark.parametrize("name", ["shapes-betavae", "shapes-infogan"])
def test_constrained_recipes_ship_every_editor_kind_with_the_shapes_regressor(name):
    recipe = RECIPES[name]
    methods = {stage.method for stage in recipe.editors}
    assert {"decurved", "linear", "rbf", "ganspace", "sefa", "attrdiff", "neuralode", "axes"} == methods
    assert recipe.editors[0].method == "decurved" and recipe.regressor == "shapes32"


def test_the_betavae_recipe_is_the_shapes_vae_with_a_heavier_kl_term():
    beta, plain = RECIPES["shapes-betavae"], RECIPES["shapes-vae"]
    assert beta.family == plain.family == "vae" and beta.config == plain.config
    assert beta.train_config.beta > 1 and plain.train_config.beta == 1
    assert beta.train_config.sigma == plain.train_config.sigma
