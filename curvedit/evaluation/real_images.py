"""Editing real images, measured from pixels: shapes drawn by another program, encoded, edited, decoded.

``draw_shapes`` draws test images with Pillow's ``ImageDraw``: ellipses, rectangles and rhombi in saturated
colours of the renders' hue range, anti-aliased by 4× supersampling, on a dark background. It is not the
project's renderer, so the encoder meets images it was not trained on. ``pixel_stats`` reads the shape's centroid
and size from the pixels alone (no regressor). ``measure`` edits every image by ``+amount`` along one direction
and reports, in standard deviations of the built-in data's factors (x: ``FACTORS[0].std`` × 16 px; size: the
long half-axis, ``FACTORS[2].std`` × 16 px), how far the centroid moved along x and how much y and size drifted,
plus the reconstruction PSNR of encode → decode.

    python -m curvedit.evaluation.real_images --model shapes-vae --direction x
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import curvedit
from curvedit.models.files import labelled_grid, save_png
from curvedit.models.renderer import FACTORS

BACKGROUND = (26, 26, 26)  # the renders' background, 0.1 of full scale
_SUPERSAMPLE = 4


def draw_shapes(n: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 ``[n, size, size, 3]`` and their drawn centres ``[n, 2]`` in pixels (x, y)."""
    rng = np.random.default_rng(seed)
    big = size * _SUPERSAMPLE
    images, centres = [], []
    for i in range(n):
        canvas = Image.new("RGB", (big, big), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        cx, cy = rng.uniform(0.3, 0.7, 2) * big
        half_long, aspect = rng.uniform(0.15, 0.27) * big, rng.uniform(0.55, 0.7)
        angle = rng.uniform(-1.0, 1.0)
        hue, saturation, value = rng.uniform(0.0, 0.75), rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0)
        colour = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        corners = {0: [(-1, -1), (1, -1), (1, 1), (-1, 1)], 1: [(0, -1), (1, 0), (0, 1), (-1, 0)]}
        kind = i % 3
        if kind == 2:  # an axis-aligned ellipse: ImageDraw draws those exactly
            draw.ellipse((cx - half_long, cy - half_long * aspect, cx + half_long, cy + half_long * aspect),
                         fill=colour)
        else:  # a rotated rectangle or rhombus
            points = []
            for u, v in corners[kind]:
                du, dv = u * half_long, v * half_long * aspect
                points.append((cx + du * math.cos(angle) + dv * math.sin(angle),
                               cy - du * math.sin(angle) + dv * math.cos(angle)))
            draw.polygon(points, fill=colour)
        images.append(np.asarray(canvas.resize((size, size), Image.LANCZOS)))
        centres.append((cx / _SUPERSAMPLE, cy / _SUPERSAMPLE))
    return np.stack(images), np.asarray(centres)


def foreground_weight(images: np.ndarray, low: float = 12.0, width: float = 48.0) -> np.ndarray:
    """``[n, H, W]`` in [0, 1]: how much each pixel of uint8 ``images [n, H, W, 3]`` is foreground, from its
    largest channel distance to the background colour (0 below ``low`` grey levels, 1 from ``low + width``)."""
    diff = np.abs(images.astype(np.float32) - np.asarray(BACKGROUND, np.float32)).max(axis=3)
    return np.clip((diff - low) / width, 0.0, 1.0)


def pixel_stats(images: np.ndarray) -> np.ndarray:
    """``[n, 3]``: the foreground's centroid (x, y in pixels, 0 at the left/top edge) and its size (the square
    root of its area in pixels); foreground = ``foreground_weight``."""
    weight = foreground_weight(images)
    mass = weight.sum(axis=(1, 2)) + 1e-6
    h, w = images.shape[1:3]
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    x = (weight.sum(axis=1) * xs).sum(axis=1) / mass
    y = (weight.sum(axis=2) * ys).sum(axis=1) / mass
    return np.stack([x, y, np.sqrt(mass)], axis=1)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2
    return -10.0 * np.log10(mse.reshape(len(a), -1).mean(axis=1).clip(1e-12))


def measure(model: curvedit.Model, direction: str = "x", amount: float = 1.0, n: int = 96, seed: int = 0,
            editor: str | None = None) -> dict:
    """Pixel measurements of ``+amount`` along ``direction`` on ``n`` drawn images (see the module docstring)."""
    images, _ = draw_shapes(n, seed, model.image_shape[0])
    z = model.encode(images)
    decoded = model.generate(z)
    edited = model.generate(model.edit(z, {direction: amount}, editor=editor))
    before, after = pixel_stats(decoded), pixel_stats(edited)
    scale_px = model.image_shape[0] / 2  # the renderer's coordinates span 2 per image width
    x_std_px, size_std_px = FACTORS[0].std * scale_px, FACTORS[2].std * scale_px
    moved = (after - before) / np.array([x_std_px, x_std_px, size_std_px])
    return {"model": model.name, "direction": direction, "amount": amount, "images": n,
            "x_shift_std": float(moved[:, 0].mean()), "y_drift_std": float(np.abs(moved[:, 1]).mean()),
            "size_drift_std": float(np.abs(moved[:, 2]).mean()),
            "x_shift_px": float((after - before)[:, 0].mean()), "x_std_px": x_std_px,
            "psnr_db_mean": float(psnr(decoded, images).mean()), "psnr_db_min": float(psnr(decoded, images).min())}


FIGURE_IMAGES = 6  # columns of the figure, and files written by --write-inputs


def figure(model: curvedit.Model, edits: list[tuple[str, float]], n: int = FIGURE_IMAGES, seed: int = 0):
    """A labelled sheet: drawn images, their encode → decode, then one row per ``(direction, amount)`` edit."""
    images, _ = draw_shapes(n, seed, model.image_shape[0])
    z = model.encode(images)
    rows = [images, model.generate(z)]
    rows += [model.generate(model.edit(z, {name: amount})) for name, amount in edits]
    labels = ["drawn", "decoded", *(f"{name} {amount:+g}" for name, amount in edits)]
    return labelled_grid(np.concatenate(rows), columns=n, row_labels=labels, column_labels=[], zoom=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-vae", help="a model that can encode (default shapes-vae)")
    parser.add_argument("--direction", default="x")
    parser.add_argument("--amount", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--editor", default=None)
    parser.add_argument("--figure", default=None, metavar="PNG",
                        help="also write a sheet: drawn, decoded, then the x, y, scale, rotation and hue edits")
    parser.add_argument("--write-inputs", default=None, metavar="DIR",
                        help="also write the figure's drawn images as PNG files (for `curvedit edit --image`)")
    args = parser.parse_args(argv)
    model = curvedit.load(args.model, engine="torch")
    print(json.dumps(measure(model, args.direction, args.amount, args.images, args.seed, args.editor), indent=2))
    if args.figure:
        names = [name for name in ("x", "y", "scale", "rotation", "hue") if name in model.directions]
        edits = [(name, args.amount) for name in names]
        save_png(figure(model, edits, seed=args.seed), args.figure)
    if args.write_inputs:
        images, _ = draw_shapes(FIGURE_IMAGES, args.seed, model.image_shape[0])
        for i, image in enumerate(images):
            save_png(Image.fromarray(image), Path(args.write_inputs) / f"shape_{i:02d}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
