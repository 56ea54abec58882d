"""A differentiable renderer of cartoon faces (64×64) from eight named continuous factors, in two styles.

The same factors render as a ``photo`` (soft edges, shading, a skin texture, a gradient background) or as an
``avatar`` (flat colours, dark outlines, exaggerated proportions: bigger eyes and mouth, a rounder face). Factors
are uniform in their ranges and measured in *standardised units* exactly as the shapes' (``renderer``): one unit
is one standard deviation of the factor, the data spans ±1.73.

Every part is a soft mask ``sigmoid(signed distance / edge width)`` over pixel centres, so the image is
differentiable in every factor; nothing is random, so a factor vector always renders the same image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from curvedit.models.renderer import Factor, sample_factors, standardize

FACE_FACTORS: tuple[Factor, ...] = (
    Factor("face_width", 0.40, 0.58, "half-width of the face, image width = 2"),
    Factor("tilt", -0.35, 0.35, "head tilt in radians, counter-clockwise on screen"),
    Factor("eye_size", 0.055, 0.10, "eye radius (photo proportions), image width = 2"),
    Factor("eye_spacing", 0.14, 0.24, "half the distance between the eye centres"),
    Factor("smile", -1.0, 1.0, "mouth curvature: -1 = frown, 0 = straight, +1 = smile"),
    Factor("brow_height", 0.09, 0.19, "height of the brows above the eye centres"),
    Factor("skin_tone", 0.0, 1.0, "0 = light, 1 = dark skin"),
    Factor("hair_colour", 0.0, 1.0, "0 = blond, 0.5 = brown, 1 = black"),
)
FACE_FACTOR_NAMES: tuple[str, ...] = tuple(f.name for f in FACE_FACTORS)
STYLES = ("photo", "avatar")
SIZE = 64

_CENTRE_Y = 0.08  # the face's centre; tilt rotates about it
_EYE_Y, _MOUTH_Y, _MOUTH_HALF_WIDTH = -0.10, 0.32, 0.17
_LIGHT_SKIN, _DARK_SKIN = (0.96, 0.80, 0.69), (0.45, 0.30, 0.20)
_HAIR = ((0.93, 0.80, 0.45), (0.45, 0.27, 0.12), (0.08, 0.07, 0.07))  # blond → brown → black
_OUTLINE = (0.08, 0.06, 0.08)


@dataclass(frozen=True)
class Style:
    """How a style draws the factors: proportions, edge softness (pixels), outline width, shading, texture."""

    face_scale: float  # × face_width
    face_height: float
    eye_scale: float  # × eye_size
    mouth_scale: float  # × the mouth's width and curvature
    edge_pixels: float
    outline: float  # outline width (image width = 2); 0 = none
    shading: float  # darkening towards the face's rim
    texture: float  # amplitude of the skin texture
    background: tuple[tuple[float, float, float], tuple[float, float, float]]  # top, bottom colours


PHOTO = Style(face_scale=1.0, face_height=0.66, eye_scale=1.25, mouth_scale=1.1, edge_pixels=0.8, outline=0.0,
              shading=0.35, texture=0.05, background=((0.62, 0.68, 0.74), (0.32, 0.36, 0.42)))
AVATAR = Style(face_scale=1.12, face_height=0.62, eye_scale=1.45, mouth_scale=1.3, edge_pixels=0.4,
               outline=0.035, shading=0.0, texture=0.0, background=((0.55, 0.80, 0.95), (0.55, 0.80, 0.95)))
_STYLES = {"photo": PHOTO, "avatar": AVATAR}


def style_of(name: str) -> Style:
    if name not in _STYLES:
        raise ValueError(f"unknown face style {name!r}; choose one of {list(STYLES)}")
    return _STYLES[name]


def _lerp_colours(t: torch.Tensor, stops: tuple[tuple[float, float, float], ...]) -> torch.Tensor:
    """``t [batch]`` in [0, 1] → ``[batch, 3]``, piecewise linear through evenly spaced colour ``stops``."""
    palette = torch.tensor(stops, dtype=t.dtype, device=t.device)  # [S, 3]
    position = t.clamp(0.0, 1.0)[:, None] * (len(stops) - 1)
    weights = (1.0 - (position - torch.arange(len(stops), dtype=t.dtype, device=t.device)).abs()).clamp_min(0.0)
    return weights @ palette


def _ellipse_distance(u: torch.Tensor, v: torch.Tensor, a, b) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse with half-axes ``a``, ``b`` (positive inside)."""
    radius = torch.sqrt((u / a).pow(2) + (v / b).pow(2) + 1e-9)
    return (1.0 - radius) * torch.minimum(torch.as_tensor(a), torch.as_tensor(b))


def _paint(image: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Composite ``colour`` (``[batch, 3]`` or ``[batch, 3, H, W]``) over ``image`` by ``mask [batch, H, W]``."""
    if colour.ndim == 2:
        colour = colour[:, :, None, None]
    return image + (colour - image) * mask[:, None]


def render_faces(raw: torch.Tensor, style: str = "photo", size: int = SIZE) -> torch.Tensor:
    """Render raw factors ``[batch, 8]`` (``FACE_FACTORS``) to images ``[batch, 3, size, size]`` in [0, 1].

    Differentiable in every factor. Pixel centres span (-1, 1); y grows downwards as in image rows.
    """
    if raw.ndim != 2 or raw.shape[1] != len(FACE_FACTORS):
        raise ValueError(f"render_faces expects factors of shape [batch, {len(FACE_FACTORS)}], "
                         f"got {list(raw.shape)}")
    s = style_of(style)
    width, tilt, eye_size, spacing, smile, brow, skin, hair = (c[:, None, None] for c in raw.unbind(dim=1))
    n, dtype, device = raw.shape[0], raw.dtype, raw.device
    coords = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size * 2.0 - 1.0
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    dx, dy = px[None], py[None] - _CENTRE_Y
    cos, sin = torch.cos(tilt), torch.sin(tilt)
    u = cos * dx - sin * dy  # the face's own frame: counter-clockwise on screen (y down)
    v = sin * dx + cos * dy
    edge = s.edge_pixels * 2.0 / size

    def mask(distance: torch.Tensor, grow: float = 0.0) -> torch.Tensor:
        return torch.sigmoid((distance + grow) / edge)

    def layer(image, colour, distance):
        if s.outline > 0:
            image = _paint(image, torch.tensor(_OUTLINE, dtype=dtype, device=device).expand(n, 3),
                           mask(distance, s.outline))
        return _paint(image, colour, mask(distance))

    top, bottom = (torch.tensor(c, dtype=dtype, device=device) for c in s.background)
    ramp = (py[None, None] + 1.0) / 2.0
    image = (top[None, :, None, None] + (bottom - top)[None, :, None, None] * ramp).expand(n, 3, size, size)

    face_a = width * s.face_scale
    hair_colour = _lerp_colours(hair[:, 0, 0], _HAIR)
    # Hair: a larger ellipse behind the face, cut off below the temples.
    hair_shape = torch.minimum(_ellipse_distance(u, v + 0.06, face_a + 0.09, s.face_height + 0.08), 0.02 - v)
    image = layer(image, hair_colour, hair_shape)
    skin_colour = _lerp_colours(skin[:, 0, 0], (_LIGHT_SKIN, _DARK_SKIN))[:, :, None, None]
    face = _ellipse_distance(u, v, face_a, s.face_height)
    if s.shading > 0 or s.texture > 0:
        rim = ((u / face_a).pow(2) + (v / s.face_height).pow(2)).clamp(max=1.5)
        light = 1.0 - s.shading * rim + s.texture * torch.sin(23.0 * u + 7.0 * v) * torch.sin(19.0 * v - 5.0 * u)
        skin_colour = skin_colour * light[:, None]
    image = layer(image, skin_colour, face)
    # A fringe over the forehead keeps hair visible inside the face in both styles.
    fringe = torch.minimum(face, -(v + 0.44 - 0.04 * torch.cos(9.0 * u)))
    image = _paint(image, hair_colour, mask(fringe))

    eye_r = eye_size * s.eye_scale
    white = torch.tensor((0.97, 0.97, 0.97), dtype=dtype, device=device).expand(n, 3)
    dark = torch.tensor((0.12, 0.10, 0.14), dtype=dtype, device=device).expand(n, 3)
    for side in (-1.0, 1.0):
        eu = u - side * spacing
        image = layer(image, white, _ellipse_distance(eu, v - _EYE_Y, eye_r, 0.75 * eye_r))
        image = _paint(image, dark, mask(_ellipse_distance(eu, v - _EYE_Y, 0.5 * eye_r, 0.5 * eye_r)))
        brow_v = v - (_EYE_Y - brow)
        brow_shape = torch.minimum(0.022 - brow_v.abs(), 1.25 * eye_r - eu.abs())
        image = _paint(image, hair_colour * 0.6, mask(brow_shape))

    half = _MOUTH_HALF_WIDTH * s.mouth_scale
    curve = _MOUTH_Y + smile * 2.4 * s.mouth_scale * (half**2 - u.pow(2))  # corners rise when smiling
    mouth = torch.minimum(0.028 * s.mouth_scale - (v - curve).abs(), half - u.abs())
    lips = torch.tensor((0.62, 0.16, 0.18) if style == "photo" else (0.35, 0.05, 0.08), dtype=dtype,
                        device=device).expand(n, 3)
    image = _paint(image, lips, mask(mouth))
    return image.clamp(0.0, 1.0)


class RenderedFaces:
    """An endless, seeded stream of labelled faces in one style: ``next_batch(n)`` gives ``(images [n, 3, 64,
    64] in [-1, 1], standardised factors [n, 8])``. Both styles from one seed draw the same factors."""

    factor_names = FACE_FACTOR_NAMES

    def __init__(self, seed: int, style: str = "photo", size: int = SIZE):
        style_of(style)
        self.style, self.size = style, size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw = sample_factors(batch_size, self.generator, FACE_FACTORS)
        with torch.no_grad():
            images = render_faces(raw, self.style, self.size) * 2.0 - 1.0
        return images, standardize(raw, FACE_FACTORS)
