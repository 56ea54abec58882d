"""A differentiable renderer of one coloured shape per image, from six named continuous factors.

The factors and their ranges are fixed: they define the built-in data set, and every model trained on it.
Each factor is sampled uniformly in its range. *Standardised units* divide the offset from the range's
midpoint by the uniform distribution's standard deviation, ``(hi - lo) / sqrt(12)``; the training data then
spans ``[-sqrt(3), +sqrt(3)]`` ≈ ``[-1.73, +1.73]`` in every factor, and an edit amount of 1.0 on a calibrated
direction moves its factor by one standard deviation of the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Factor:
    name: str
    low: float
    high: float
    meaning: str

    @property
    def mean(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def std(self) -> float:
        return (self.high - self.low) / math.sqrt(12.0)


FACTORS: tuple[Factor, ...] = (
    Factor("x", -0.35, 0.35, "horizontal centre, image width = 2 (left to right)"),
    Factor("y", -0.35, 0.35, "vertical centre, image height = 2 (top to bottom)"),
    Factor("scale", 0.3, 0.6, "half-length of the long axis, image width = 2"),
    Factor("rotation", -1.0, 1.0, "angle of the long axis in radians, counter-clockwise on screen"),
    Factor("shape", 0.0, 1.0, "superellipse morph: 0 = rhombus (exponent 1.2), 1 = rounded box (exponent 6)"),
    Factor("hue", 0.0, 0.75, "hue of the shape's colour, 0 = red, 1/3 = green, 2/3 = blue"),
)
FACTOR_NAMES: tuple[str, ...] = tuple(f.name for f in FACTORS)
NUM_FACTORS = len(FACTORS)

_ASPECT = 0.6  # short half-axis / long half-axis: keeps rotation visible at every shape
_BACKGROUND = 0.1
_SATURATION = 0.85
_VALUE = 0.95
_EDGE_PIXELS = 0.35  # logistic edge width in pixels: smooth enough for gradients, sharp to the eye


def _ranges(factors: tuple[Factor, ...] = FACTORS) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([f.low for f in factors]), torch.tensor([f.high for f in factors])


def _moments(factors: tuple[Factor, ...], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor([f.mean for f in factors], device=like.device, dtype=like.dtype)
    std = torch.tensor([f.std for f in factors], device=like.device, dtype=like.dtype)
    return mean, std


def standardize(raw: torch.Tensor, factors: tuple[Factor, ...] = FACTORS) -> torch.Tensor:
    """Raw factors ``[batch, F]`` → standardised units ``[batch, F]`` (``factors``: the shapes' six by default)."""
    mean, std = _moments(factors, raw)
    return (raw - mean) / std


def unstandardize(units: torch.Tensor, factors: tuple[Factor, ...] = FACTORS) -> torch.Tensor:
    """Standardised units ``[batch, F]`` → raw factors ``[batch, F]``."""
    mean, std = _moments(factors, units)
    return units * std + mean


def sample_factors(n: int, generator: torch.Generator, factors: tuple[Factor, ...] = FACTORS) -> torch.Tensor:
    """Raw factors ``[n, F]``, each uniform in its range; deterministic for a seeded ``generator``."""
    low, high = _ranges(factors)
    return low + (high - low) * torch.rand(n, len(factors), generator=generator)


def _hue_to_rgb(hue: torch.Tensor) -> torch.Tensor:
    """``[batch]`` hue in [0, 1) → ``[batch, 3]`` RGB in [0, 1], piecewise linear and differentiable."""
    h6 = hue[:, None] * 6.0
    centres = torch.tensor([3.0, 2.0, 4.0], device=hue.device, dtype=hue.dtype)
    signs = torch.tensor([1.0, -1.0, -1.0], device=hue.device, dtype=hue.dtype)
    offsets = torch.tensor([-1.0, 2.0, 2.0], device=hue.device, dtype=hue.dtype)
    pure = (signs * (h6 - centres).abs() + offsets).clamp(0.0, 1.0)
    return _VALUE * (1.0 - _SATURATION + _SATURATION * pure)


def render(raw: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Render raw factors ``[batch, 6]`` to images ``[batch, 3, size, size]`` in [0, 1].

    Differentiable in every factor. Pixel centres span (-1, 1); y grows downwards as in image rows.
    """
    if raw.ndim != 2 or raw.shape[1] != NUM_FACTORS:
        raise ValueError(f"render expects factors of shape [batch, {NUM_FACTORS}], got {list(raw.shape)}")
    x, y, scale, rotation, shape, hue = raw.unbind(dim=1)
    coords = (torch.arange(size, device=raw.device, dtype=raw.dtype) + 0.5) / size * 2.0 - 1.0
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    dx = px[None] - x[:, None, None]
    dy = py[None] - y[:, None, None]
    # Rotate into the shape's frame; screen y points down, so negate it for a counter-clockwise angle.
    cos, sin = torch.cos(rotation)[:, None, None], torch.sin(rotation)[:, None, None]
    u = (cos * dx - sin * dy) / scale[:, None, None]
    v = (-sin * dx - cos * dy) / (scale[:, None, None] * _ASPECT)
    exponent = (1.2 * 5.0 ** shape)[:, None, None]
    # The superellipse norm (|u|^e + |v|^e)^(1/e), computed so that its gradient stays finite where edited
    # latents take factors far outside their ranges: scaled by m = max(|u|, |v|), no power exceeds 1 (shape 2
    # gives e = 40, and |u|^e would overflow to inf, making the mask's gradient 0 · inf = NaN); and the ratios
    # are kept off exact 0, where x^e has an infinite slope once e < 1 (shape < -0.11).
    m = torch.maximum(u.abs(), v.abs()).clamp_min(1e-12)
    a, b = ((w.abs() / m).clamp_min(1e-12) for w in (u, v))
    radius = m * (a.pow(exponent) + b.pow(exponent)).pow(1.0 / exponent)
    pixel = 2.0 / size
    mask = torch.sigmoid((1.0 - radius) * scale[:, None, None] / (_EDGE_PIXELS * pixel))
    colour = _hue_to_rgb(hue)[:, :, None, None]
    return _BACKGROUND + (colour - _BACKGROUND) * mask[:, None]


class RenderedShapes:
    """An endless, seeded stream of labelled renders: each call gives ``(images, standardised factors)``.

    ``images`` are ``[batch, 3, size, size]`` in [-1, 1] (the generator's range).
    """

    def __init__(self, seed: int, size: int = 32):
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw = sample_factors(batch_size, self.generator)
        with torch.no_grad():
            images = render(raw, self.size) * 2.0 - 1.0
        return images, standardize(raw)
