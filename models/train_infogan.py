"""Train an InfoGAN on the built-in renders: the DCGAN recipe (hinge loss, spectral-norm critic, EMA of the
generator) plus the mutual-information term ``λ · ½‖Q(G(c, n)) − c‖²`` in both updates.

A run directory holds ``checkpoint.pt`` (resumable: every network, optimiser, RNG and the loss log),
``samples.png`` (a grid from fixed latents, updated at every checkpoint), ``codes.png`` (one row per code,
swept −2 … 2 on fixed noise) and, when the run finishes, ``generator.safetensors``: the EMA generator,
bias-corrected (``debias``) because a run of a few thousand steps is short next to the EMA's memory.

Reference: Chen et al., "InfoGAN", NeurIPS 2016; Miyato et al., "Spectral Normalization for GANs", ICLR 2018.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from curvedit.models.families import register_training
from curvedit.models.files import (
    image_grid,
    load_checkpoint,
    save_checkpoint,
    save_generator_weights,
    save_png,
    to_uint8,
)
from curvedit.models.infogan import InfoDiscriminator, InfoGAN, InfoGANConfig, InfoGANTrainConfig, info_loss
from curvedit.models.renderer import RenderedShapes
from curvedit.models.train_generator import _update_ema, sample_grid


@register_training(InfoGAN)
def train_infogan(out_dir: str | Path, config: InfoGANConfig = InfoGANConfig(),
                  train_config: InfoGANTrainConfig = InfoGANTrainConfig(), progress: bool = True) -> InfoGAN:
    """Train (or resume from ``out_dir/checkpoint.pt``) an InfoGAN; returns the EMA generator in eval mode."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_config.seed)  # parameter initialisation only
    generator = InfoGAN(config)
    initial = copy.deepcopy(generator.state_dict())
    critic = InfoDiscriminator(config.codes, config.base_channels)
    ema = copy.deepcopy(generator)
    opt_g = torch.optim.Adam(generator.parameters(), lr=train_config.lr, betas=train_config.betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=train_config.lr, betas=train_config.betas)
    data = RenderedShapes(seed=train_config.seed)
    noise = torch.Generator().manual_seed(train_config.seed + 1)
    fixed = torch.randn(32, config.latent_dim, generator=torch.Generator().manual_seed(1234))
    identity = {"config": config.to_dict(), "train_config": train_config.to_dict()}
    ckpt, start, log = out_dir / "checkpoint.pt", 0, []
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        if _run_identity(state) != _run_identity(identity):
            raise ValueError(f"{ckpt} was written for another InfoGAN or training config: use another run "
                             "directory or the same settings (only steps may differ)")
        if state["step"] > train_config.steps:
            raise ValueError(f"{ckpt} is at step {state['step']}, past the {train_config.steps} steps asked for")
        for module, key in ((generator, "generator"), (critic, "critic"), (ema, "ema"), (opt_g, "opt_g"),
                            (opt_d, "opt_d")):
            module.load_state_dict(state[key])
        data.generator.set_state(state["data_rng"])
        noise.set_state(state["noise_rng"])
        start, log = state["step"], state["log"]

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt, {**identity, "step": step, "generator": generator.state_dict(),
                               "critic": critic.state_dict(), "ema": ema.state_dict(), "opt_g": opt_g.state_dict(),
                               "opt_d": opt_d.state_dict(), "data_rng": data.generator.get_state(),
                               "noise_rng": noise.get_state(), "log": log})
        save_png(sample_grid(ema, fixed), out_dir / "samples.png")
        save_png(code_sweep(ema, config), out_dir / "codes.png")
        ema.train()

    lam, n = train_config.info_weight, train_config.batch_size
    bar = tqdm(total=train_config.steps, initial=start, disable=not progress, desc="infogan", unit="step")
    t0, window = time.time(), []
    for step in range(start, train_config.steps):
        generator.train()
        real, _ = data.next_batch(n)
        z = torch.randn(n, config.latent_dim, generator=noise)
        codes = z[:, : config.codes]
        fake = generator(z)
        real_score, _ = critic(real)
        fake_score, fake_codes = critic(fake.detach())
        info_d = info_loss(fake_codes, codes)
        loss_d = F.relu(1.0 - real_score).mean() + F.relu(1.0 + fake_score).mean() + lam * info_d
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        score, predicted = critic(fake)
        info_g = info_loss(predicted, codes)
        loss_g = -score.mean() + lam * info_g
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        _update_ema(ema, generator, train_config.ema_decay)

        window.append((loss_d.item(), loss_g.item(), info_g.item()))
        bar.update(1)
        if len(window) == 100:
            log.append([sum(v) / len(v) for v in zip(*window, strict=True)])
            bar.set_postfix(loss_d=f"{log[-1][0]:.3f}", loss_g=f"{log[-1][1]:.3f}", info=f"{log[-1][2]:.3f}")
            window = []
        if (step + 1) % train_config.checkpoint_every == 0 or step + 1 == train_config.steps:
            checkpoint(step + 1)
    bar.close()
    ema = debias(ema, initial, train_config.ema_decay, train_config.steps).eval()
    save_generator_weights(ema, out_dir)
    if progress and start < train_config.steps:
        print(f"infogan: {train_config.steps - start} steps in {time.time() - t0:.0f} s → {out_dir}")
    return ema


@torch.no_grad()
def debias(ema: InfoGAN, initial: dict, decay: float, steps: int) -> InfoGAN:
    """The EMA after ``steps`` updates is ``decay^steps · θ₀ + (1 − decay) Σ_s decay^(steps−s) θ_s``; remove the
    initial weights' share and renormalise, as Adam does for its moments, so the result averages trained iterates
    only (at 2,000 steps and decay 0.999 the random initialisation would otherwise weigh 14 %). Buffers (batch-norm
    statistics) are copied from the trained generator, not averaged, and stay as they are."""
    weight = decay**steps
    if steps < 1 or weight >= 1.0:
        return ema
    for name, parameter in ema.named_parameters():
        parameter.copy_((parameter - weight * initial[name]) / (1.0 - weight))
    return ema


def _run_identity(state: dict) -> dict:
    """What a checkpoint must share to resume: everything but the length of the run. The learning rate is
    constant, so a run stopped at a checkpoint can be finished there (``steps`` = its step) or extended."""
    train = {k: v for k, v in state["train_config"].items() if k not in ("steps", "checkpoint_every")}
    return {"config": state["config"], "train_config": json_like(train)}


def json_like(data: dict) -> dict:
    """Tuples as lists, as a saved-and-loaded checkpoint holds them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


@torch.no_grad()
def code_sweep(generator: InfoGAN, config: InfoGANConfig, columns: int = 7, span: float = 2.0):
    """One row per code: the code swept ``−span … span`` with every other coordinate of one fixed latent."""
    generator.eval()
    base = torch.randn(1, config.latent_dim, generator=torch.Generator().manual_seed(4321))
    values = torch.linspace(-span, span, columns)
    rows = []
    for k in range(config.codes):
        z = base.repeat(columns, 1)
        z[:, k] = values
        rows.append(generator(z))
    return image_grid(to_uint8(torch.cat(rows)), columns, zoom=2)
