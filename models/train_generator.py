"""Train the GAN on the built-in renders: hinge loss, spectral-norm critic, EMA of the generator.

A run directory holds ``checkpoint.pt`` (resumable), ``samples.png`` (a grid from fixed latents, updated at
every checkpoint) and ``generator.safetensors`` (the EMA generator, written when the run finishes).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
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
from curvedit.models.generator import Discriminator, Generator, GeneratorConfig
from curvedit.models.renderer import RenderedShapes


@dataclass(frozen=True)
class GANTrainConfig:
    steps: int = 10000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _update_ema(ema: Generator, model: Generator, decay: float) -> None:
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - decay)
        for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


def sample_grid(generator: Generator, latents: torch.Tensor, columns: int = 8):
    generator.eval()
    with torch.no_grad():
        images = to_uint8(generator(latents))
    return image_grid(images, columns, zoom=2)


@register_training(Generator)
def train_generator(
    out_dir: str | Path,
    gen_config: GeneratorConfig = GeneratorConfig(),
    train_config: GANTrainConfig = GANTrainConfig(),
    progress: bool = True,
) -> Generator:
    """Train (or resume) a GAN run in ``out_dir``; returns the EMA generator in eval mode."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_config.seed)
    generator = Generator(gen_config)
    critic = Discriminator(gen_config.base_channels)
    ema = copy.deepcopy(generator)
    opt_g = torch.optim.Adam(generator.parameters(), lr=train_config.lr, betas=train_config.betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=train_config.lr, betas=train_config.betas)
    data = RenderedShapes(seed=train_config.seed)
    noise = torch.Generator().manual_seed(train_config.seed + 1)
    fixed = torch.randn(32, gen_config.latent_dim, generator=torch.Generator().manual_seed(1234))
    start = 0

    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state["gen_config"] != gen_config.to_dict():
            raise ValueError(
                f"{ckpt_path} was written with generator config {state['gen_config']}, not "
                f"{gen_config.to_dict()}: use another --out directory or the same settings"
            )
        generator.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        ema.load_state_dict(state["ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        data.generator.set_state(state["data_rng"])
        noise.set_state(state["noise_rng"])
        start = state["step"]

    def checkpoint(step: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "step": step,
                "gen_config": gen_config.to_dict(),
                "generator": generator.state_dict(),
                "critic": critic.state_dict(),
                "ema": ema.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "data_rng": data.generator.get_state(),
                "noise_rng": noise.get_state(),
            },
        )
        save_png(sample_grid(ema, fixed), out_dir / "samples.png")
        ema.train()

    bar = tqdm(total=train_config.steps, initial=start, disable=not progress, desc="generator", unit="step")
    t0 = time.time()
    for step in range(start, train_config.steps):
        generator.train()
        real, _ = data.next_batch(train_config.batch_size)
        z = torch.randn(train_config.batch_size, gen_config.latent_dim, generator=noise)
        fake = generator(z)
        loss_d = F.relu(1.0 - critic(real)).mean() + F.relu(1.0 + critic(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        loss_g = -critic(fake).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        _update_ema(ema, generator, train_config.ema_decay)

        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}")
        if (step + 1) % train_config.checkpoint_every == 0 or step + 1 == train_config.steps:
            checkpoint(step + 1)
    bar.close()

    ema.eval()
    save_generator_weights(ema, out_dir)
    if progress and start < train_config.steps:
        print(f"generator: {train_config.steps - start} steps in {time.time() - t0:.0f} s → {out_dir}")
    return ema
