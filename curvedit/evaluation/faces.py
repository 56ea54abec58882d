"""Measuring the faces models and their alignment: ``python -m curvedit.evaluation.faces``.

- **factor agreement across domains**: held-out photo renders (true factors known) are encoded by the photo
  model, translated, rendered by the avatar model and read by the *avatar* regressor; per factor, R² and the
  correlation against the true factors. Beside it: the same through an untrained (identity) map, and the ceiling
  — avatar renders of the same factors through the avatar model's own encode → decode. And on sampled latents:
  the avatar reading of the translation against the photo reading of the source image. The VAEs were trained
  with a factor-consistency term through their own regressors, so the images are also read by *judges*:
  regressors of each style trained apart (another seed, another width: ``JUDGE``), which no model saw; a decoder
  that fooled its training regressor instead of drawing the factor would show it there.
- **commutation** of edit and translation: ``‖T(E_s(z, t)) − E_t(T(z), t)‖ / ‖E_t(T(z), t) − T(z)‖`` per
  direction, and the largest pixel difference of the two renders (uint8 levels).
- **image quality per style**: reconstruction PSNR of held-out renders; Fréchet distance between the style's
  regressor features of generated samples and of renders.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import curvedit
from curvedit.evaluation.metrics import frechet_distance, psnr
from curvedit.models.alignment import LatentAlignment, translate_latents
from curvedit.models.datasets import make_dataset
from curvedit.models.faces import FACE_FACTOR_NAMES, FACE_FACTORS, render_faces
from curvedit.models.files import labelled_grid, save_png, to_uint8
from curvedit.models.regressor import FactorRegressor, RegressorTrainConfig, regressor_for, train_regressor

# The judges' training: like the recipes' regressors (3,000 steps), but another seed and width.
JUDGE = {"steps": 3000, "seed": 17, "channels": 16}


def r_squared(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per column ``[F]``: 1 − Σ(truth − predicted)² / Σ(truth − mean)²."""
    residual = (truth - predicted).pow(2).sum(0)
    total = (truth - truth.mean(0)).pow(2).sum(0).clamp_min(1e-12)
    return 1.0 - residual / total


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp_min(1e-12)


def _per_factor(values: torch.Tensor, names) -> dict:
    return {name: round(float(v), 4) for name, v in zip(names, values, strict=True)} | {
        "mean": round(float(values.mean()), 4)}


class Pair:
    """The two shipped models, their modules, and the map between them."""

    def __init__(self, source: str, target: str):
        self.source_model, self.target_model = (curvedit.load(n, engine="torch") for n in (source, target))
        self.source, self.target = self.source_model.bundle, self.target_model.bundle
        self.names = list(self.source.regressor.factor_names)
        entry = self.source.manifest["alignments"][target]
        self.f_s = self.source.editors[entry["source_editor"]]
        self.f_t = self.target.editors[entry["target"]["editor"]]
        self.alignment = self.source.alignments[target]
        self.identity = LatentAlignment(self.f_s.latent_dim, self.f_s.directions).eval()

    def translate(self, z: torch.Tensor, alignment=None) -> torch.Tensor:
        return translate_latents(self.f_s, alignment or self.alignment, self.f_t, z)


def judge(data: str, directory: Path) -> FactorRegressor:
    """The judge of a style: a regressor trained apart from the model's (``JUDGE``), cached in ``directory``."""
    from safetensors.torch import load_file, save_file

    path = Path(directory) / f"judge_{data}.safetensors"
    regressor = regressor_for(data, JUDGE["channels"])
    if path.is_file():
        regressor.load_state_dict(load_file(path))
    else:
        regressor, _ = train_regressor(RegressorTrainConfig(data=data, **JUDGE), progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(regressor.state_dict(), path)
    return regressor.eval()


@torch.no_grad()
def agreement(pair: Pair, n: int = 1000, judges: tuple[FactorRegressor, FactorRegressor] | None = None) -> dict:
    """R² (and correlation) per factor; with ``judges`` (source's, target's), also every image read by them
    (keys ending ``_judged``)."""
    photos, truth = make_dataset(pair.source.manifest["training"]["generator"]["data"], 0).held_out_labelled(n)
    avatars, _ = make_dataset(pair.target.manifest["training"]["generator"]["data"], 0).held_out_labelled(n)
    g_s, g_t = pair.source.generator, pair.target.generator
    z = g_s.encode(photos)
    images = {  # name → (images, read in the target's style?)
        "translated": (g_t.decode(pair.translate(z)), True),
        "identity_map": (g_t.decode(pair.translate(z, pair.identity)), True),
        "source_decoded": (g_s.decode(z), False),
        "target_ceiling": (g_t.decode(g_t.encode(avatars)), True),
        "source_renders": (photos, False),
        "target_renders": (avatars, True),
    }
    readers = {"": (pair.source.regressor, pair.target.regressor)}
    if judges is not None:
        readers["_judged"] = judges
    read = {}
    for suffix, (r_s, r_t) in readers.items():
        for name, (batch, in_target) in images.items():
            read[name + suffix] = (r_t if in_target else r_s)(batch)
    out = {f"r2_{k}": _per_factor(r_squared(v, truth), pair.names) for k, v in read.items()}
    r_s, r_t = pair.source.regressor, pair.target.regressor
    out["corr_translated"] = _per_factor(correlation(read["translated"], truth), pair.names)
    sampled = torch.randn(n, g_s.latent_dim, generator=torch.Generator().manual_seed(5))
    source_reading = r_s(g_s.decode(sampled))
    for key, alignment in (("translated", None), ("identity_map", pair.identity)):
        target_reading = r_t(g_t.decode(pair.translate(sampled, alignment)))
        out[f"r2_sampled_{key}"] = _per_factor(r_squared(target_reading, source_reading), pair.names)
    return out


@torch.no_grad()
def commutation(pair: Pair, n: int = 256, amount: float = 1.0) -> dict:
    z = torch.randn(n, pair.f_s.latent_dim, generator=torch.Generator().manual_seed(6))
    out = {}
    for k, name in enumerate(pair.f_s.directions):
        t = torch.zeros(n, len(pair.f_s.directions))
        t[:, k] = amount
        translated = pair.translate(z)
        a = pair.translate(pair.f_s.edit(z, t))
        b = pair.f_t.edit(translated, t)
        pixels = np.abs(to_uint8(pair.target.generator.decode(a)).astype(int)
                        - to_uint8(pair.target.generator.decode(b)).astype(int)).max()
        out[name] = {"latent_relative": float((a - b).norm() / (b - translated).norm()), "pixel_max": int(pixels)}
    out["max_latent_relative"] = max(v["latent_relative"] for v in out.values())
    return out


@torch.no_grad()
def quality(model: curvedit.Model, n: int = 1000, judge: FactorRegressor | None = None) -> dict:
    """Reconstruction PSNR, and Fréchet distances in the features of the model's regressor (and of ``judge``:
    the VAE was trained through its own regressor, whose features it may match more closely than the images)."""
    bundle = model.bundle
    data = make_dataset(bundle.manifest["training"]["generator"]["data"], 0)
    renders = data.held_out(n)
    generator = bundle.generator
    reconstructions = generator.decode(generator.encode(renders))
    recon = psnr(reconstructions, renders)
    samples = generator.decode(torch.from_numpy(model.sample(n, seed=10_000)))
    out = {"psnr_mean_db": round(float(recon.mean()), 2), "psnr_min_db": round(float(recon.min()), 2)}
    for suffix, reader in (("", bundle.regressor), ("_judged", judge)):
        if reader is None:
            continue
        real = reader.features(renders).numpy()
        for name, images in (("samples", samples), ("reconstructions", reconstructions)):
            distance = frechet_distance(reader.features(images).numpy(), real)
            out[f"frechet_{name}_vs_renders{suffix}"] = round(distance, 3)
    return out


@torch.no_grad()
def figure(pair: Pair, path: Path, count: int = 6,
           edits=(("hair_colour", -1.5), ("tilt", 1.5), ("smile", 1.5))) -> None:
    """Rows: photo renders, their decoding, their avatars; then per edit the edited photo and its avatar."""
    photos, _ = make_dataset(pair.source.manifest["training"]["generator"]["data"], 0).held_out_labelled(count)
    g_s, g_t = pair.source.generator, pair.target.generator
    z = g_s.encode(photos)
    rows, labels = [photos, g_s.decode(z), g_t.decode(pair.translate(z))], ["photo", "decoded", "avatar"]
    for name, amount in edits:
        t = torch.zeros(count, len(pair.f_s.directions))
        t[:, pair.f_s.directions.index(name)] = amount
        edited = pair.f_s.edit(z, t)
        rows += [g_s.decode(edited), g_t.decode(pair.translate(edited))]
        labels += [f"photo {name} {amount:+g}", f"avatar {name} {amount:+g}"]
    grid = labelled_grid(to_uint8(torch.cat(rows)), columns=count, row_labels=labels,
                         column_labels=[str(i) for i in range(count)], zoom=2)
    save_png(grid, path)


@torch.no_grad()
def factor_sweep_figure(path: Path, steps: int = 5) -> None:
    """The renderer itself: one row per factor, low → high with the others at their midpoints, photo then
    avatar side by side."""
    rows = []
    for index, factor in enumerate(FACE_FACTORS):
        raw = torch.tensor([[f.mean for f in FACE_FACTORS]]).repeat(steps, 1)
        raw[:, index] = torch.linspace(factor.low, factor.high, steps)
        rows += [render_faces(raw, "photo") * 2 - 1, render_faces(raw, "avatar") * 2 - 1]
    images = to_uint8(torch.cat(rows)).reshape(len(FACE_FACTORS), 2 * steps, 64, 64, 3)
    grid = labelled_grid(images.reshape(-1, 64, 64, 3), columns=2 * steps, row_labels=list(FACE_FACTOR_NAMES),
                         column_labels=["low", "", "photo", "", "high", "low", "", "avatar", "", "high"], zoom=2)
    save_png(grid, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="faces-photo", help="source model (default faces-photo)")
    parser.add_argument("--target", default="faces-avatar", help="target model (default faces-avatar)")
    parser.add_argument("--json", default=None, help="write the numbers here (default: print only)")
    parser.add_argument("--figure", default=None, help="write the figure here (default: none)")
    parser.add_argument("--sweep-figure", default=None, help="write the renderer's factor sweep here (default: "
                                                             "none)")
    parser.add_argument("--lead-figure", default=None, help="write the README's short figure here: photo, "
                                                            "decoded, avatar, and a smile edit (default: none)")
    parser.add_argument("--judges", default="runs/faces-judges",
                        help="where the judges (regressors trained apart, see JUDGE) are cached; trained there "
                             "when missing, about 7 minutes per style on one core; '' = no judges "
                             "(default runs/faces-judges)")
    args = parser.parse_args(argv)
    if args.sweep_figure:
        factor_sweep_figure(Path(args.sweep_figure))
    pair = Pair(args.source, args.target)
    judges = None
    if args.judges:
        judges = tuple(judge(bundle.manifest["training"]["generator"]["data"], Path(args.judges))
                       for bundle in (pair.source, pair.target))
    torch.set_grad_enabled(False)
    source_judge, target_judge = judges or (None, None)
    results = {"agreement": agreement(pair, judges=judges), "commutation": commutation(pair),
               "quality": {args.source: quality(pair.source_model, judge=source_judge),
                           args.target: quality(pair.target_model, judge=target_judge)},
               "digests": {args.source: pair.source.digest, args.target: pair.target.digest}}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.figure:
        figure(pair, Path(args.figure))
    if args.lead_figure:
        figure(pair, Path(args.lead_figure), edits=(("smile", 1.5),))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
