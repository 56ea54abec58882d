"""The InfoGAN family: a GAN whose latent is ``[codes, noise]``, trained so that the codes can be read back from
the image (the mutual information ``I(c; G(c, n))`` is maximised through an auxiliary head ``Q(c | x)``).

The generator is the DCGAN's (``fc → BN → ReLU → 3 transposed convolutions → tanh``), so image quality compares
with the ``dcgan`` family's directly; only the training differs. Both codes and noise are drawn from ``N(0, I)``
(InfoGAN's continuous codes with a Gaussian prior), so the family keeps the contract's standard-normal prior and
every editor, metric and engine treats its latents like any other. ``code_axes()`` names the code coordinates:
the axes the family was trained to make independent controls (the ``axes`` editor moves them).

The critic and ``Q`` share a spectral-norm convolutional body; ``Q``'s head predicts the codes' means under a
unit-variance Gaussian, so the mutual-information lower bound is, up to a constant, ``−½ ‖Q(G(c, n)) − c‖²``.

Reference: Chen et al., "InfoGAN: Interpretable Representation Learning by Information Maximizing Generative
Adversarial Nets", NeurIPS 2016.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from curvedit.models.families import register_family
from curvedit.models.generator import Generator, critic_layers


@dataclass(frozen=True)
class InfoGANConfig:
    codes: int = 6
    noise: int = 2
    image_size: int = 32
    base_channels: int = 32

    def __post_init__(self):
        if self.codes < 1 or self.noise < 0:
            raise ValueError(f"need codes >= 1 and noise >= 0, got codes={self.codes}, noise={self.noise}")

    @property
    def latent_dim(self) -> int:
        return self.codes + self.noise

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InfoGANTrainConfig:
    steps: int = 6000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    info_weight: float = 1.0  # λ: weight of the mutual-information term, in both the G and the D/Q updates
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.info_weight < 0:
            raise ValueError(f"need steps >= 1 and info_weight >= 0, got {self.steps}, {self.info_weight}")

    def to_dict(self) -> dict:
        return asdict(self)


@register_family
class InfoGAN(Generator):
    """``z = [c (codes), n (noise)] [batch, codes + noise]`` → images ``[batch, 3, 32, 32]`` in [-1, 1].

    The DCGAN generator with its latent split in two; SeFa and GANSpace read it as they read the DCGAN.
    """

    family = "infogan"
    config_class = InfoGANConfig

    def __init__(self, config: InfoGANConfig = InfoGANConfig()):
        super().__init__(config)

    def evaluation_facts(self, steps: int, known: dict) -> dict:
        weight = known.get("generator", {}).get("info_weight", InfoGANTrainConfig.info_weight)
        return {"constraint": f"InfoGAN, mutual information of {self.config.codes} codes (λ = {weight:g})"}

    def code_axes(self) -> list[int]:
        """The code coordinates ``0 .. codes − 1`` (the noise coordinates are not controls)."""
        return list(range(self.config.codes))


class InfoDiscriminator(nn.Module):
    """Images ``[batch, 3, 32, 32]`` → ``(realness [batch], code means [batch, codes])``: the SNGAN critic's body
    shared by the critic's head and ``Q``'s head."""

    def __init__(self, codes: int, base_channels: int = 32):
        super().__init__()
        c = base_channels
        self.body = nn.Sequential(*critic_layers(c), nn.Flatten())  # the same layer indices as before
        self.head = spectral_norm(nn.Linear(4 * c * 16, 1))
        self.q = nn.Sequential(nn.Linear(4 * c * 16, 128), nn.LeakyReLU(0.1), nn.Linear(128, codes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)
        return self.head(features).squeeze(1), self.q(features)


def info_loss(predicted: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``½ E‖Q(x) − c‖²`` per code: the negative mutual-information lower bound up to a constant (Gaussian Q with
    unit variance), averaged over the batch and the codes."""
    return 0.5 * (predicted - codes).pow(2).mean()
