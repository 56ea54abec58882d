"""Factor readings from pixels alone, without the factor regressor: a held-out instrument for purity.

The regressor is what supervised editors are trained against, so purity measured with it rewards fitting the
regressor's quirks as well as moving the factor. These statistics are computed from the foreground's moments
(a soft foreground like ``real_images.pixel_stats``, from 24 grey levels off the background: generated images
speckle their background at 4–20 levels, and moments up to the fourth order weigh such stray pixels far from the
shape heavily — from 12 levels, every edit of the shipped GAN moved the kurtosis by 4–7 standard deviations)
and share nothing with training:

- ``x``, ``y``: the centroid in pixels;
- ``rotation``: the orientation of the principal axis (half the angle of the second-moment tensor), counter-
  clockwise on screen, in radians (periodic with period π);
- ``shape``: minus the kurtosis ``E[u⁴]/E[u²]²`` of the foreground along its principal axis (a box's profile is
  uniform: 1.8; a rhombus's is triangular: 2.4), so that it grows from rhombus to box like the factor;
- ``scale``: the half-length of the long axis, ``sqrt(E[u²] / c(κ))`` with ``c`` interpolated from 1/3 (uniform
  profile) to 1/6 (triangular) by the kurtosis κ, which removes most of the shape's effect on the second moment;
- ``hue``: the circular mean of the foreground's HSV hue (periodic with period 1).

``pixel_response`` turns them into the evaluation's response matrix: mean |Δ statistic| per direction, each in
units of the statistic's standard deviation over real renders, so rows are comparable across statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from curvedit.evaluation.real_images import foreground_weight
from curvedit.models.files import to_uint8
from curvedit.models.renderer import FACTOR_NAMES, RenderedShapes

STATS = FACTOR_NAMES  # each statistic stands for the factor of the same name
PERIODS = np.array([0.0, 0.0, 0.0, np.pi, 0.0, 1.0])  # 0: not periodic
FOREGROUND_LOW = 24.0  # grey levels off the background below which a pixel is background (see above)
_HUE_OFFSET = 0.125  # hues are reported in [-0.125, 0.875): the renders' range 0–0.75 does not wrap


def _hue(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in [0, 1) of float RGB ``[..., 3]`` (grey pixels get 0)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top, bottom = rgb.max(-1), rgb.min(-1)
    span = np.where(top - bottom > 1e-6, top - bottom, 1.0)
    hue = np.where(top == r, (g - b) / span, np.where(top == g, 2.0 + (b - r) / span, 4.0 + (r - g) / span))
    return (hue / 6.0) % 1.0


def pixel_factors(images: np.ndarray) -> np.ndarray:
    """uint8 images ``[n, H, W, 3]`` → statistics ``[n, 6]``, in the order of ``STATS`` (module docstring)."""
    weight = foreground_weight(images, low=FOREGROUND_LOW).astype(np.float64)  # [n, H, W]
    mass = weight.sum(axis=(1, 2)) + 1e-6
    h, w = images.shape[1:3]
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    cx = (weight * xs).sum(axis=(1, 2)) / mass
    cy = (weight * ys).sum(axis=(1, 2)) / mass
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    mxx, myy = (weight * dx * dx).sum((1, 2)) / mass, (weight * dy * dy).sum((1, 2)) / mass
    mxy = (weight * dx * dy).sum((1, 2)) / mass
    theta = 0.5 * np.arctan2(2 * mxy, mxx - myy)  # image axes (y down)
    u = dx * np.cos(theta)[:, None, None] + dy * np.sin(theta)[:, None, None]  # along the principal axis
    second = (weight * u**2).sum((1, 2)) / mass
    kurtosis = (weight * u**4).sum((1, 2)) / mass / np.maximum(second, 1e-9) ** 2
    profile = np.clip(1 / 3 - (kurtosis - 1.8) / 0.6 * (1 / 6), 1 / 8, 1 / 2)
    rgb = images.astype(np.float64) / 255.0
    angle = 2 * np.pi * _hue(rgb)
    hue_c = (weight * np.cos(angle)).sum((1, 2)) / mass
    hue_s = (weight * np.sin(angle)).sum((1, 2)) / mass
    hue = (np.arctan2(hue_s, hue_c) / (2 * np.pi) + _HUE_OFFSET) % 1.0 - _HUE_OFFSET
    return np.stack([cx, cy, np.sqrt(second / profile), -theta, -kurtosis, hue], axis=1)


def difference(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """``after − before`` ``[n, 6]``, periodic statistics wrapped into ``[−period/2, period/2)``."""
    delta = after - before
    periodic = PERIODS > 0
    period = np.where(periodic, PERIODS, 1.0)
    wrapped = (delta + period / 2) % period - period / 2
    return np.where(periodic, wrapped, delta)


def real_spread(count: int = 2048, seed: int = 424_242, size: int = 32) -> np.ndarray:
    """Standard deviation ``[6]`` of each statistic over ``count`` real renders (the units of the response)."""
    images, _ = RenderedShapes(seed=seed, size=size).next_batch(count)
    return pixel_factors(to_uint8(images)).std(axis=0)


@torch.no_grad()
def pixel_response(generator, editor, z: torch.Tensor, spread: np.ndarray, amount: float = 1.0) -> torch.Tensor:
    """``[K, 6]``: mean |Δ statistic j| / ``spread[j]`` when direction k moves by ±``amount`` (half the latents +,
    half −, as ``models.measure.factor_response``)."""
    n = z.shape[0]
    signs = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    before = pixel_factors(to_uint8(generator(z)))
    rows = []
    for k in range(editor.num_directions):
        amounts = torch.zeros(n, editor.num_directions)
        amounts[:, k] = amount * signs
        after = pixel_factors(to_uint8(generator(editor.edit(z, amounts))))
        rows.append(np.abs(difference(after, before)).mean(0) / spread)
    return torch.from_numpy(np.stack(rows)).float()
