"""A generator you might bring to curvedit: soft coloured blobs whose position, size and colour depend on a
4-dimensional latent through a fixed, nonlinear map (a small random MLP), so straight lines in z are curved in
the image.

It is a plain ``torch.nn.Module`` mapping latents ``[n, 4]`` to images ``[n, 3, 32, 32]`` in [-1, 1], with a
``latent_dim`` attribute — all curvedit needs (see docs/BRING_YOUR_OWN.md):

    curvedit train editor --generator blobs:make_generator --out runs/blobs --steps 300

``make_regressor`` is an attribute reader for supervised training: it measures the blob's centre (x, y) from the
pixels, so ``--mode supervised --regressor blobs:make_regressor --directions x,y`` ties direction x to moving
the blob right and y to moving it down.
"""

import torch
from torch import nn


class BlobGenerator(nn.Module):
    latent_dim = 4

    def __init__(self, size: int = 32, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.bend = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4))
        with torch.no_grad():
            for p in self.bend.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.6)
        coords = (torch.arange(size) + 0.5) / size * 2 - 1
        self.register_buffer("grid_y", coords[:, None].expand(size, size).clone())
        self.register_buffer("grid_x", coords[None, :].expand(size, size).clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        p = torch.tanh(0.7 * z + 0.5 * self.bend(z))
        x, y = 0.55 * p[:, 0, None, None], 0.55 * p[:, 1, None, None]
        radius = (0.28 + 0.12 * p[:, 2])[:, None, None]
        warmth = p[:, 3]
        mask = torch.exp(-((self.grid_x - x) ** 2 + (self.grid_y - y) ** 2) / (2 * radius**2))
        colour = torch.stack([0.55 + 0.4 * warmth, 0.35 + 0.1 * warmth, 0.55 - 0.4 * warmth], dim=1)
        image = 0.05 + mask[:, None] * colour[:, :, None, None]
        return image * 2 - 1


class CentroidRegressor(nn.Module):
    """Images ``[n, 3, H, W]`` in [-1, 1] → the brightness-weighted centre ``[n, 2]`` (x, y), in units of the
    blob's typical spread so that an amount of 1 moves the blob by a visible step."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[2:]
        weight = ((images.mean(dim=1) + 1) / 2 - 0.05).clamp_min(0)  # background ≈ 0.05
        weight = weight / weight.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6)
        ys = (torch.arange(h, dtype=images.dtype, device=images.device) + 0.5) / h * 2 - 1
        xs = (torch.arange(w, dtype=images.dtype, device=images.device) + 0.5) / w * 2 - 1
        x = (weight.sum(dim=1) * xs).sum(dim=1)
        y = (weight.sum(dim=2) * ys).sum(dim=1)
        return torch.stack([x, y], dim=1) / 0.25


def make_generator() -> BlobGenerator:
    return BlobGenerator().eval()


def make_regressor() -> CentroidRegressor:
    return CentroidRegressor().eval()
