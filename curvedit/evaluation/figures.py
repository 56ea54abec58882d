"""Evaluation figures drawn with PIL (no plotting library): traversals, A∘B vs B∘A, purity vs curvature, samples of
every generator, purity against image quality."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from curvedit.bundle import Bundle
from curvedit.evaluation.metrics import single
from curvedit.models.files import image_grid, save_png, to_uint8

_FONT = ImageFont.load_default()
_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
            (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127)]


def _labelled(rows: list[tuple[str, Image.Image]], title: str, label_width: int = 150) -> Image.Image:
    """Stack image rows with a text label on the left and a title on top."""
    width = label_width + max(im.width for _, im in rows)
    height = 22 + sum(im.height for _, im in rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black", font=_FONT)
    top = 22
    for label, im in rows:
        canvas.paste(im, (label_width, top))
        draw.text((4, top + im.height // 2 - 6), label, fill="black", font=_FONT)
        top += im.height
    return canvas


def _direction_index(editor, direction: str) -> int:
    return editor.directions.index(direction) if direction in editor.directions else 0


@torch.no_grad()
def traversals(bundle: Bundle, direction: str, path: Path, latents: int = 2, span: float = 2.0,
               steps: int = 7, seed: int = 7) -> Path:
    """Each editor's traversal of ``direction`` (or its first direction) on the same latents, side by side."""
    z = torch.randn(latents, bundle.generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    amounts = torch.linspace(-span, span, steps)
    rows = []
    for name, editor in bundle.editors.items():
        k = _direction_index(editor, direction)
        frames = [bundle.generator(editor.edit(z, single(z, editor.num_directions, k, float(t))))
                  for t in amounts]  # each [latents, 3, H, W]
        images = torch.stack(frames, 1).flatten(0, 1)  # latent-major: one row per latent
        grid = image_grid(to_uint8(images), columns=steps, zoom=2)
        rows.append((f"{name}: {editor.directions[k]}", grid))
    title = f"{bundle.manifest['name']}: traversals, amounts {-span:g} … {span:g} (same latents in every row)"
    return save_png(_labelled(rows, title), path)


@torch.no_grad()
def commutation(bundle: Bundle, editors: list[str], a: str, b: str, path: Path, amount: float = 1.5,
                latents: int = 4, seed: int = 11) -> Path:
    """Per editor, columns ``z | A∘B(z) | B∘A(z) | 4×|difference|`` for a few latents."""
    z = torch.randn(latents, bundle.generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    rows = []
    for name in editors:
        editor = bundle.editors[name]
        ka, kb, count = _direction_index(editor, a), _direction_index(editor, b), editor.num_directions
        ab = editor.edit(editor.edit(z, single(z, count, kb, amount)), single(z, count, ka, amount))
        ba = editor.edit(editor.edit(z, single(z, count, ka, amount)), single(z, count, kb, amount))
        images = [bundle.generator(z), bundle.generator(ab), bundle.generator(ba)]
        images.append((4 * (images[1] - images[2]).abs() - 1).clamp(-1, 1))
        grid = image_grid(to_uint8(torch.stack(images, 1).flatten(0, 1)), columns=4, zoom=2)
        rows.append((f"{name}\nz | A(B(z)) | B(A(z))\n| 4 x |difference|", grid))
    title = f"{bundle.manifest['name']}: A = {a} +{amount:g}, B = {b} +{amount:g}"
    return save_png(_labelled(rows, title, label_width=170), path)


def purity_plot(results: list[dict], path: Path, size: tuple[int, int] = (560, 360)) -> Path:
    """Mean purity against curvature, one line per editor name, the computed linear ceiling dashed."""
    charts = sorted((b for b in results if "curvature" in b), key=lambda b: b["curvature"])
    series: dict[str, list[tuple[float, float]]] = {}
    for b in charts:
        for name, e in b["editors"].items():
            if "factors" in e:
                series.setdefault(name, []).append((b["curvature"], e["factors"]["mean_purity"]))
        series.setdefault("linear ceiling", []).append((b["curvature"], b["linear_ceiling"]["mean_purity"]))
    w, h = size
    left, right, top, bottom = 50, 150, 20, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    xs = [c for b in charts for c in [b["curvature"]]] or [0.0, 1.0]
    to_px = _purity_axes(draw, size, (left, right, top, bottom), min(xs), max(max(xs), min(xs) + 1e-6))
    for x in sorted(set(xs)):
        px = to_px(x, 0)
        draw.line([px, (px[0], px[1] + 4)], fill="black")
        draw.text((px[0] - 8, px[1] + 6), f"{x:g}", fill="black", font=_FONT)
    draw.text((left + 80, h - 16), "curvature c of the known chart", fill="black", font=_FONT)
    draw.text((4, 2), "mean purity", fill="black", font=_FONT)
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = (0, 0, 0) if name == "linear ceiling" else _COLOURS[i % len(_COLOURS)]
        pts = [to_px(x, y) for x, y in sorted(points)]
        if name == "linear ceiling":
            for p, q in itertools.pairwise(pts):
                for s in np.linspace(0, 1, 12, endpoint=False)[::2]:
                    draw.line([_lerp(p, q, s), _lerp(p, q, s + 1 / 12)], fill=colour, width=2)
        elif len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for p in pts:
            draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)
        ly = top + 14 * i
        draw.line([(w - right + 10, ly + 6), (w - right + 30, ly + 6)], fill=colour, width=2)
        draw.text((w - right + 34, ly), name, fill="black", font=_FONT)
    return save_png(image, path)


def _purity_axes(draw, size: tuple[int, int], margins: tuple[int, int, int, int], x_lo: float, x_hi: float):
    """Draw the x axis and a purity axis (0 … 1, ticks every 0.2) inside ``margins`` (left, right, top, bottom);
    returns the map from (x, purity) to pixels."""
    (w, h), (left, right, top, bottom) = size, margins

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (w - left - right), top + (1 - y) * (h - top - bottom))

    draw.line([to_px(x_lo, 0), to_px(x_hi, 0)], fill="black")
    draw.line([to_px(x_lo, 0), to_px(x_lo, 1)], fill="black")
    for y in np.linspace(0, 1, 6):
        px = to_px(x_lo, float(y))
        draw.line([(px[0] - 4, px[1]), px], fill="black")
        draw.text((px[0] - 34, px[1] - 6), f"{y:.1f}", fill="black", font=_FONT)
    return to_px


def _lerp(p, q, s):
    return (p[0] + (q[0] - p[0]) * s, p[1] + (q[1] - p[1]) * s)


@torch.no_grad()
def samples(bundles: list[tuple[str, Bundle]], real: torch.Tensor, path: Path, count: int = 10,
            seed: int = 5) -> Path:
    """One row of samples from the prior per generator (the same seeds), real images on top."""
    rows = [("real", image_grid(to_uint8(real[:count].expand(-1, 3, -1, -1)), columns=count, zoom=2))]
    for label, bundle in bundles:
        z = torch.randn(count, bundle.generator.latent_dim, generator=torch.Generator().manual_seed(seed))
        rows.append((label, image_grid(to_uint8(bundle.generator.eval()(z)), columns=count, zoom=2)))
    return save_png(_labelled(rows, "samples from each generator's prior (top: real images)"), path)


def quality_purity(results: list[dict], path: Path, size: tuple[int, int] = (620, 380)) -> Path:
    """Each editor's mean purity (y) against its generator's Fréchet distance to real images (x): what an
    editor reaches, and at what image quality, one column of markers per learned generator (factors read by the
    regressor; a known chart renders exactly, and its distance only reflects its factor distribution)."""
    bundles = [b for b in results if "frechet_to_real" in b.get("quality", {})
               and b.get("factors_from") == "regressor"]
    w, h = size
    left, right, top, bottom = 50, 130, 20, 56
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if not bundles:
        return save_png(image, path)
    xs = [b["quality"]["frechet_to_real"] for b in bundles]
    to_px = _purity_axes(draw, size, (left, right, top, bottom), 0.0, max(xs) * 1.1 + 1e-6)
    names = sorted({name for b in bundles for name, e in b["editors"].items() if "factors" in e})
    for b, x in zip(bundles, xs, strict=True):
        px = to_px(x, 0)
        draw.line([px, (px[0], px[1] + 4)], fill="black")
        draw.text((px[0] - 20, px[1] + 6 + 12 * (bundles.index(b) % 3)), f"{b['label']} {x:.0f}", fill="black",
                  font=_FONT)
        for name, e in b["editors"].items():
            if "factors" in e:
                colour = _COLOURS[names.index(name) % len(_COLOURS)]
                cx, cy = to_px(x, e["factors"]["mean_purity"])
                draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour)
    draw.text((left + 60, h - 14), "Frechet distance of the generator's samples to real images",
              fill="black", font=_FONT)
    draw.text((4, 2), "mean purity (regressor)", fill="black", font=_FONT)
    for i, name in enumerate(names):
        colour = _COLOURS[i % len(_COLOURS)]
        ly = top + 14 * i
        draw.ellipse([w - right + 14, ly + 2, w - right + 22, ly + 10], fill=colour)
        draw.text((w - right + 28, ly), name, fill="black", font=_FONT)
    return save_png(image, path)
