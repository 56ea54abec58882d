"""The reconstructor of the unsupervised recipe: from an image pair, which direction moved and by how much.

Reference: Voynov & Babenko, "Unsupervised Discovery of Interpretable Directions in the GAN Latent Space",
ICML 2020 (LeNet-like reconstructor for small images), as used by DeCurvEd.
"""

from __future__ import annotations

import torch
from torch import nn


class Reconstructor(nn.Module):
    """Images ``[batch, 3, H, W]`` twice → ``(direction logits [batch, K], amount [batch])``."""

    def __init__(self, num_directions: int, channels: int = 32):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(6, c, 4, 2, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(c, 2 * c, 4, 2, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1),
            nn.LeakyReLU(0.1),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * c * 4, 128),
            nn.LeakyReLU(0.1),
        )
        self.direction = nn.Linear(128, num_directions)
        self.amount = nn.Linear(128, 1)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(torch.cat([before, after], dim=1))
        return self.direction(h), self.amount(h).squeeze(1)
