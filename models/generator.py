"""DCGAN-style generator and an SNGAN-style discriminator for 32×32 RGB images.

Reference: Radford et al., "Unsupervised Representation Learning with Deep Convolutional GANs", ICLR 2016;
Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from curvedit.models.families import GeneratorFamily, register_family


@dataclass(frozen=True)
class GeneratorConfig:
    latent_dim: int = 8
    image_size: int = 32
    base_channels: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


@register_family
class Generator(GeneratorFamily):
    """The ``dcgan`` family: ``z [batch, latent_dim]`` → images ``[batch, 3, size, size]`` in [-1, 1].

    Starts with a linear layer acting on z (SeFa factorises its weight; GANSpace reads fc → BN → ReLU). Batch
    norm runs in eval mode once trained, so an image depends only on its own latent. No encoder.
    """

    family = "dcgan"
    config_class = GeneratorConfig

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__(config)
        if config.image_size != 32:
            raise ValueError(f"only 32×32 generators are implemented, got image_size={config.image_size}")
        c = config.base_channels
        self.start_channels = 4 * c
        self.fc = nn.Linear(config.latent_dim, 4 * 4 * self.start_channels)
        self.body = nn.Sequential(
            nn.BatchNorm2d(4 * c),
            nn.ReLU(),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1),  # 8×8
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1),  # 16×16
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.ConvTranspose2d(c, 3, 4, 2, 1),  # 32×32
            nn.Tanh(),
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.start_channels, 4, 4)
        return self.body(h)

    def linear_map(self) -> torch.Tensor:
        return self.fc.weight

    def edit_features(self, z: torch.Tensor) -> torch.Tensor:
        """The first nonlinear activations (fc → BN → ReLU), ``[n, 16 · 4c]``."""
        h = self.fc(z).view(z.shape[0], self.start_channels, 4, 4)
        return self.body[:2](h).flatten(1)


def critic_layers(c: int) -> list[nn.Module]:
    """The SNGAN critic's convolutional body, images ``[batch, 3, 32, 32]`` → features ``[batch, 4c, 4, 4]``;
    shared by the GAN's critic and InfoGAN's (whose Q head reads the same features)."""
    return [spectral_norm(nn.Conv2d(3, c, 4, 2, 1)),  # 16×16
            nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(c, 2 * c, 4, 2, 1)),  # 8×8
            nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(2 * c, 4 * c, 4, 2, 1)),  # 4×4
            nn.LeakyReLU(0.1)]


class Discriminator(nn.Module):
    """Images ``[batch, 3, 32, 32]`` → realness scores ``[batch]``; spectral norm on every layer."""

    def __init__(self, base_channels: int = 32):
        super().__init__()
        c = base_channels
        self.body = nn.Sequential(*critic_layers(c))
        self.head = spectral_norm(nn.Linear(4 * c * 4 * 4, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images).flatten(1)).squeeze(1)
