"""Training the conditional PixelCNN: maximum likelihood (teacher-forced cross-entropy over the quantised colours)
of 16×16 shapes renders (the 32×32 renders, 2×2-averaged), conditioned on ``h = encode(image)`` through a frozen
encoder — the shipped ``shapes-vae``'s, so ``h`` lives in that VAE's latent space."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from curvedit.models.datasets import make_dataset
from curvedit.models.families import register_training
from curvedit.models.files import (
    image_grid,
    load_checkpoint,
    save_checkpoint,
    save_generator_weights,
    save_png,
    to_uint8,
)
from curvedit.models.pixelcnn import PixelCNN, PixelCNNConfig, dequantise, quantise


@dataclass(frozen=True)
class PixelCNNTrainConfig:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    encoder_from: str | None = "shapes-vae"  # the shipped model whose encoder conditions; None: the random one
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0; got {self.steps}, {self.batch_size}, "
                             f"{self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


def training_pair(model: PixelCNN, images32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """32×32 renders ``[n, 3, 32, 32]`` → ``(colour classes [n, 16, 16], h [n, d])``; ``h`` is what ``encode``
    gives for the (unquantised) 16×16 image."""
    small = F.avg_pool2d(images32, 2)
    with torch.no_grad():
        h = model.encode(small)
    return quantise(small, model.config), h


def nll_per_pixel(model: PixelCNN, classes: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in nats per pixel."""
    return F.cross_entropy(model.logits(classes, h), classes)


def _load_encoder(model: PixelCNN, name: str) -> None:
    from curvedit.api import load  # the shipped model whose encoder this family conditions on

    source = load(name, engine="torch").bundle.generator
    if not hasattr(source, "encoder") or source.latent_dim != model.latent_dim:
        raise ValueError(f"{name!r} has no encoder of latent_dim {model.latent_dim} to condition the PixelCNN on")
    model.encoder.load_state_dict(source.encoder.state_dict())


@register_training(PixelCNN)
def train_pixelcnn(run_dir: str | Path, config: PixelCNNConfig, train_config: PixelCNNTrainConfig,
                   progress: bool = True) -> PixelCNN:
    """Train (or resume from ``run_dir/checkpoint.pt``) a PixelCNN; writes ``generator.safetensors`` and
    ``samples.png`` (held-out renders on top, samples conditioned on their ``h`` below). Eval mode."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_config.seed)  # parameter initialisation only
    model = PixelCNN(config)
    if train_config.encoder_from is not None:
        _load_encoder(model, train_config.encoder_from)
    model.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=train_config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, train_config.steps)
    data = make_dataset("shapes", train_config.seed, 32)
    identity = {"config": config.to_dict(), "train_config": train_config.to_dict()}
    ckpt, start, log = run_dir / "checkpoint.pt", 0, []
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        if {k: state[k] for k in identity} != identity:
            raise ValueError(f"{ckpt} was written for another PixelCNN or training config: use another run "
                             "directory or the same settings")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        data.generator.set_state(state["data_rng"])
        start, log = state["step"], state["log"]
    held_out = data.held_out(8)

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt, {**identity, "step": step, "model": model.state_dict(), "opt": opt.state_dict(),
                               "sched": sched.state_dict(), "data_rng": data.generator.get_state(), "log": log})
        write_samples(model, run_dir, held_out)

    bar = tqdm(total=train_config.steps, initial=start, disable=not progress, desc="pixelcnn (shapes)",
               unit="step")
    t0, window = time.time(), []
    for step in range(start, train_config.steps):
        model.train()
        classes, h = training_pair(model, data.next_batch(train_config.batch_size))
        loss = nll_per_pixel(model, classes, h)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(loss.item())
        bar.update(1)
        if len(window) == 100:
            log.append(sum(window) / len(window))
            bar.set_postfix(nll=f"{log[-1]:.3f}")
            window = []
        if (step + 1) % train_config.checkpoint_every == 0 or step + 1 == train_config.steps:
            checkpoint(step + 1)
    bar.close()
    model.eval()
    save_generator_weights(model, run_dir)
    if progress and start < train_config.steps:
        print(f"pixelcnn: {train_config.steps - start} steps in {time.time() - t0:.0f} s → {run_dir}")
    return model


@torch.no_grad()
def write_samples(model: PixelCNN, run_dir: Path, held_out: torch.Tensor) -> None:
    model.eval()
    classes, h = training_pair(model, held_out)
    samples = model.sample(h, list(range(len(h))))
    grid = torch.cat([dequantise(classes, model.config), dequantise(samples, model.config)])
    save_png(image_grid(to_uint8(grid), len(h), zoom=4), run_dir / "samples.png")
