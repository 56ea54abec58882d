"""The VAE family: a convolutional variational autoencoder whose decoder is the generator and whose encoder lets a
user edit a real image (encode → edit → decode).

Decoder: ``z → Linear(d, hidden) → SiLU → Linear(hidden, w·4·4) → SiLU → transposed convolutions → tanh``
(the first linear layer is the one SeFa factorises; its activations are GANSpace's feature space). Encoder:
strided convolutions and two linear layers to the posterior mean and log-variance; ``encode`` returns the mean.
At 32×32 there are three resolution levels of widths c, 2c, 4c; at 64×64 four, of widths c, c, 2c, ``top``·c
(``top_multiplier``, default 4), so a 64×64 model can stay small.
Grayscale data (``channels = 1``) decodes to grey RGB, and the encoder reads the mean of the RGB channels.

Training maximises the ELBO with a Gaussian likelihood of fixed scale ``sigma`` (in [-1, 1] pixel units) and the
KL term weighted by ``beta`` (1 = the plain VAE; > 1 = β-VAE), linearly warmed up over ``kl_warmup`` steps. On
labelled renders, ``factor_weight`` > 0 adds a factor-consistency term: a frozen factor regressor reads each
reconstruction, and its squared error against the render's known factors (summed over factors, in standardised
units) is added to the negative log-likelihood with that weight. Features a few pixels wide (the faces' eyes, brows
and mouth) cost the pixel likelihood too little for a small VAE to encode them; this term makes them count.

Reference: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; Higgins et al., "β-VAE", ICLR 2017.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from curvedit.models.datasets import DATASETS, LABELLED, channels_of, make_dataset
from curvedit.models.families import GeneratorFamily, register_family, register_training
from curvedit.models.files import (
    image_grid,
    load_checkpoint,
    save_checkpoint,
    save_generator_weights,
    save_png,
    to_uint8,
)


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 8
    image_size: int = 32
    channels: int = 3  # of the data: 1 = grayscale (decoded to grey RGB), 3 = colour
    base_channels: int = 32
    hidden: int = 256
    top_multiplier: int = 4  # the widest level's channels, × base_channels

    def __post_init__(self):
        if self.image_size not in (32, 64):
            raise ValueError(f"the VAE is built for 32×32 or 64×64 images, got image_size={self.image_size}")
        if self.top_multiplier not in (2, 4):
            raise ValueError(f"top_multiplier must be 2 or 4, got {self.top_multiplier}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (colour), got {self.channels}")
        if self.latent_dim < 2:
            raise ValueError(f"latent_dim must be >= 2, got {self.latent_dim}")

    def to_dict(self) -> dict:
        """The fields, without ``top_multiplier`` at its default (so bundles written before it load unchanged)."""
        fields = asdict(self)
        if self.top_multiplier == 4:
            del fields["top_multiplier"]
        return fields

    def widths(self) -> list[int]:
        """Channels per resolution level, finest first: ``[c, 2c, 4c]`` at 32×32, ``[c, c, 2c, top·c]`` at 64."""
        c = self.base_channels
        return [c, 2 * c, 4 * c] if self.image_size == 32 else [c, c, 2 * c, self.top_multiplier * c]


@dataclass(frozen=True)
class VAETrainConfig:
    data: str = "shapes"
    steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    beta: float = 1.0
    sigma: float = 0.1
    kl_warmup: int = 2000
    checkpoint_every: int = 1000
    seed: int = 0
    factor_weight: float = 0.0  # the factor-consistency term's weight (labelled data and a regressor); 0 = off

    def __post_init__(self):
        if self.data not in DATASETS:
            raise ValueError(f"data must be one of {list(DATASETS)}, got {self.data!r}")
        if self.beta < 0 or self.sigma <= 0 or self.steps < 1:
            raise ValueError(f"need beta >= 0, sigma > 0, steps >= 1; got {self.beta}, {self.sigma}, {self.steps}")
        if self.factor_weight < 0:
            raise ValueError(f"factor_weight must be >= 0, got {self.factor_weight}")
        if self.factor_weight > 0 and self.data not in LABELLED:
            raise ValueError(f"factor_weight needs a labelled render set ({list(LABELLED)}); {self.data!r} has "
                             "no factors: set factor_weight=0")

    def to_dict(self) -> dict:
        """The fields, without ``factor_weight`` when it is off (so runs and bundles written before it match)."""
        fields = asdict(self)
        if self.factor_weight == 0:
            del fields["factor_weight"]
        return fields


@register_family
class VAE(GeneratorFamily):
    """``decode(z [n, d]) → [n, 3, S, S]`` in [-1, 1]; ``encode(images) → posterior mean [n, d]``."""

    family = "vae"
    config_class = VAEConfig
    can_encode = True

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__(config)
        d, h, widths = config.latent_dim, config.hidden, config.widths()
        down, channels = [], config.channels
        for width in widths:  # each halves the size, down to 4×4
            down += [nn.Conv2d(channels, width, 4, 2, 1), nn.SiLU()]
            channels = width
        top = widths[-1] * 16
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(top, h), nn.SiLU(), nn.Linear(h, 2 * d))
        self.fc = nn.Linear(d, h)
        up = []
        for width, finer in zip(widths[::-1], [*widths[::-1][1:], config.channels], strict=True):
            up += [nn.ConvTranspose2d(width, finer, 4, 2, 1), nn.SiLU()]  # each doubles the size
        up[-1] = nn.Tanh()
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(h, top), nn.SiLU(), nn.Unflatten(1, (widths[-1], 4, 4)),
                                  *up)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        images = self.body(self.fc(z))
        return images.expand(-1, 3, -1, -1) if self.config.channels == 1 else images

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[n, 3, H, W]`` (or ``[n, channels, H, W]``) in [-1, 1] → ``(mean, log-variance) [n, d]``."""
        if self.config.channels == 1 and images.shape[1] == 3:
            images = images.mean(dim=1, keepdim=True)
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 8.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.posterior(images)[0]

    def linear_map(self) -> torch.Tensor:
        return self.fc.weight

    def edit_features(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.fc(z))

    def evaluation_facts(self, steps: int, known: dict) -> dict:
        """A KL weight β ≠ 1 (``known["generator"]``, the recorded training config) is training under a
        constraint: β-VAE."""
        beta = float(known.get("generator", {}).get("beta", 1.0))
        return {"constraint": f"β-VAE, KL weight β = {beta:g}"} if beta != 1.0 else {}


def elbo_terms(vae: VAE, images: torch.Tensor, sigma: float, noise: torch.Generator | None = None):
    """Per image ``(reconstruction negative log-likelihood up to a constant, KL, reconstruction)``, the first two
    ``[n]``; one z sample."""
    mean, logvar = vae.posterior(images)
    eps = torch.randn(mean.shape, generator=noise, device=mean.device)
    z = mean + eps * (0.5 * logvar).exp()
    recon = vae.body(vae.fc(z))
    nll = (recon - images).pow(2).flatten(1).sum(1) / (2 * sigma**2)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return nll, kl, recon


def psnr(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], computed on the [0, 1] scale (peak 1)."""
    mse = ((reconstructed - original) / 2).pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


@register_training(VAE)
def train_vae(run_dir: str | Path, config: VAEConfig, train_config: VAETrainConfig,
              progress: bool = True, regressor: nn.Module | None = None) -> VAE:
    """Train (or resume from ``run_dir/checkpoint.pt``) a VAE; writes ``generator.safetensors``, ``samples.png``
    and ``reconstructions.png`` (held-out top, reconstruction below) into ``run_dir``. Returns it in eval mode.
    ``regressor`` (the data's factor regressor, kept frozen) is needed when ``factor_weight`` > 0."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if channels_of(train_config.data) != config.channels:
        raise ValueError(f"data {train_config.data!r} has {channels_of(train_config.data)} channel(s), the VAE "
                         f"config {config.channels}")
    if train_config.factor_weight > 0 and regressor is None:
        raise ValueError("factor_weight > 0 needs the data's factor regressor: pass regressor=, or set "
                         "factor_weight=0")
    if regressor is not None:
        regressor.eval().requires_grad_(False)
    torch.manual_seed(train_config.seed)  # parameter initialisation only
    vae = VAE(config)
    opt = torch.optim.Adam(vae.parameters(), lr=train_config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, train_config.steps)
    data = make_dataset(train_config.data, train_config.seed, config.image_size)
    noise = torch.Generator().manual_seed(train_config.seed + 1)
    identity = {"config": config.to_dict(), "train_config": train_config.to_dict()}
    ckpt, start, log = run_dir / "checkpoint.pt", 0, []
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        if {k: state[k] for k in identity} != identity:
            raise ValueError(f"{ckpt} was written for another VAE or training config: use another run directory "
                             "or the same settings")
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        data.generator.set_state(state["data_rng"])
        noise.set_state(state["noise_rng"])
        start, log = state["step"], state["log"]
    held_out = data.held_out(16)
    fixed = torch.randn(32, config.latent_dim, generator=torch.Generator().manual_seed(1234))

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt, {**identity, "step": step, "vae": vae.state_dict(), "opt": opt.state_dict(),
                               "sched": sched.state_dict(), "data_rng": data.generator.get_state(),
                               "noise_rng": noise.get_state(), "log": log})
        write_figures(vae, run_dir, fixed, held_out)

    pixels = 3 * config.image_size**2
    bar = tqdm(total=train_config.steps, initial=start, disable=not progress, desc=f"vae ({train_config.data})",
               unit="step")
    t0, window = time.time(), []
    for step in range(start, train_config.steps):
        vae.train()
        images, factors = (data.next_labelled(train_config.batch_size) if train_config.factor_weight > 0
                           else (data.next_batch(train_config.batch_size), None))
        nll, kl, recon = elbo_terms(vae, images, train_config.sigma, noise)
        beta = train_config.beta * min(1.0, (step + 1) / max(1, train_config.kl_warmup))
        loss = nll + beta * kl
        terms = [nll.mean().item(), kl.mean().item()]
        if factors is not None:
            factor_error = (regressor(recon) - factors).pow(2).sum(1)
            loss = loss + train_config.factor_weight * factor_error
            terms.append(factor_error.mean().item())
        opt.zero_grad(set_to_none=True)
        (loss.mean() / pixels).backward()
        opt.step()
        sched.step()
        window.append(terms)
        bar.update(1)
        if len(window) == 100:
            log.append([sum(v) / len(v) for v in zip(*window, strict=True)])  # nll, kl[, factor error]
            bar.set_postfix(nll=f"{log[-1][0]:.0f}", kl=f"{log[-1][1]:.1f}")
            window = []
        if (step + 1) % train_config.checkpoint_every == 0 or step + 1 == train_config.steps:
            checkpoint(step + 1)
    bar.close()
    vae.eval()
    save_generator_weights(vae, run_dir)
    if progress and start < train_config.steps:
        print(f"vae: {train_config.steps - start} steps in {time.time() - t0:.0f} s → {run_dir}")
    return vae


@torch.no_grad()
def write_figures(vae: VAE, run_dir: Path, fixed: torch.Tensor, held_out: torch.Tensor) -> None:
    vae.eval()
    save_png(image_grid(to_uint8(vae.decode(fixed)), 8, zoom=2), run_dir / "samples.png")
    pairs = torch.cat([held_out.expand(-1, 3, -1, -1), vae.decode(vae.encode(held_out))])
    save_png(image_grid(to_uint8(pairs), len(held_out), zoom=2), run_dir / "reconstructions.png")


@torch.no_grad()
def standardize_latents(vae: VAE, images: torch.Tensor) -> dict:
    """Fold the aggregate posterior's per-axis mean ``m`` and standard deviation ``s`` into the weights, so that
    the new latent ``(z − m) / s`` has mean 0 and variance 1 over ``images`` ``[n, C, H, W]`` and the prior
    ``N(0, I)`` covers where the data's codes are. The encoder's mean and log-variance outputs are rescaled
    (exactly), the decoder's first layer takes ``m + s·z``; returns ``{"mean": m, "std": s}`` as lists.

    Why: a VAE whose KL term is weak against the likelihood of many pixels ends with codes off-centre (means of
    ±1.5 on some axes were seen on the 64×64 faces), and prior samples then decode to noise.
    """
    vae.eval()
    mean, logvar = vae.posterior(images)
    m = mean.mean(0)
    s = (mean.var(0) + logvar.exp().mean(0)).sqrt()  # the aggregate posterior's variance per axis
    d, last = vae.latent_dim, vae.encoder[-1]
    last.weight[:d] /= s[:, None]
    last.bias[:d] = (last.bias[:d] - m) / s
    last.bias[d:] -= 2 * s.log()
    vae.fc.bias += vae.fc.weight @ m
    vae.fc.weight *= s[None, :]
    return {"mean": m.tolist(), "std": s.tolist()}


@torch.no_grad()
def reconstruction_psnr(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``decode(encode(images))`` against ``images`` (both in [-1, 1], grey as RGB)."""
    vae.eval()
    target = images.expand(-1, 3, -1, -1)
    return psnr(vae.decode(vae.encode(images)), target)
