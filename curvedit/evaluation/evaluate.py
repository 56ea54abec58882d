"""Evaluate every editor of a bundle: commutation, loops, round trips, curvature, purity (by the factor regressor
and, held out, by pixel statistics), calibration, probe, quality, cost; and the generator itself: Fréchet distance
of its samples to real images in the regressor's features, reconstruction PSNR when it can encode.

Latents are held out from every training seed (``EvalConfig.seed``); the same latents serve every editor.
Factors are the generator's own ``true_factors()`` where it has them (the known-chart family: ``ψ(z)``), and the
bundle's factor regressor on renders otherwise. Nothing here depends on the family: what a generator can do is
asked through its contract (``can_encode``, ``true_factors``, ``evaluation_facts``), and its real images are those
of the data its training recorded (``training.generator.data``; the built-in renders when none is recorded).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from curvedit.bundle import Bundle
from curvedit.engines.torch_engine import TorchEngine
from curvedit.evaluation import metrics
from curvedit.evaluation.pixel_factors import pixel_response, real_spread
from curvedit.models.datasets import make_dataset
from curvedit.models.measure import factor_responses, purity
from curvedit.models.reconstructor import Reconstructor
from curvedit.models.renderer import FACTOR_NAMES


@dataclass(frozen=True)
class EvalConfig:
    samples: int = 512
    seed: int = 20_261_127  # held out: training seeds are small integers
    amounts: tuple[float, ...] = (0.5, 1.0, 2.0)
    max_pairs: int = 6
    probe_steps: int = 150
    probe_batch: int = 64
    timing_repeats: int = 20
    ceiling_steps: int = 300
    quality_samples: int = 1024  # generated and real images for the generator's Fréchet distance and PSNR
    pixel_spread_samples: int = 2048  # real renders whose spread sets the units of the pixel statistics

    def __post_init__(self):
        if self.samples < 8 or 1.0 not in self.amounts:
            raise ValueError(f"need samples >= 8 and 1.0 among amounts, got {self.samples}, {self.amounts}")

    def to_dict(self) -> dict:
        return asdict(self)


def factor_space(bundle: Bundle):
    """``z → factors [batch, 6]`` or None when the bundle has no way to read factors."""
    truth = bundle.generator.true_factors()
    if truth is not None:
        return truth
    if bundle.regressor is None:
        return None
    return lambda z: bundle.regressor(bundle.generator(z))


def _pairs(count: int, limit: int) -> list[tuple[int, int]]:
    pairs = list(itertools.combinations(range(count), 2))
    if len(pairs) <= limit:
        return pairs
    pick = np.random.default_rng(0).choice(len(pairs), size=limit, replace=False)
    return [pairs[i] for i in sorted(pick)]


@torch.no_grad()
def _geometry(editor, generator, factors, z: torch.Tensor, config: EvalConfig) -> dict:
    count = editor.num_directions
    pairs = _pairs(count, config.max_pairs)
    out: dict = {"pairs": pairs}
    for t in config.amounts:
        row = {
            "commutation_latent": np.mean([metrics.commutation_error(editor.edit, z, count, a, b, t, t)
                                           for a, b in pairs]) if pairs else 0.0,
            "loop": np.mean([metrics.loop_error(editor.edit, z, count, a, b, t, t) for a, b in pairs])
            if pairs else 0.0,
            "round_trip": np.mean([metrics.round_trip_error(editor.edit, z, count, k, t) for k in range(count)]),
            "path_curvature": np.mean([metrics.path_curvature(editor.edit, z, count, k, t) for k in range(count)]),
        }
        # Pixel and factor spaces need renders: measured at the table's amount only (not at all for a sampler).
        if t == 1.0 and pairs and generator is not None:
            row["commutation_pixel"] = np.mean([metrics.commutation_error(editor.edit, z, count, a, b, t, t,
                                                                          generator) for a, b in pairs])
            if factors is not None:
                row["commutation_factor"] = np.mean([metrics.commutation_error(editor.edit, z, count, a, b, t, t,
                                                                               factors) for a, b in pairs])
        out[f"amount={t:g}"] = {k: float(v) for k, v in row.items()}
    return out


def _matched(editor, response: torch.Tensor) -> tuple[str, list[int]]:
    """Directions named by factors are matched by name; unnamed ones with the factor each moves most."""
    if all(d in FACTOR_NAMES for d in editor.directions):
        return "name", [FACTOR_NAMES.index(d) for d in editor.directions]
    return "argmax", response.argmax(1).tolist()


@torch.no_grad()
def _disentanglement(editor, factors, z: torch.Tensor) -> dict:
    response, signed = factor_responses(factors, editor, torch.nn.Identity(), z, amount=1.0)
    matched_by, matched = _matched(editor, response)
    per_direction = purity(response, matched)
    disentanglement, completeness = metrics.dci(response)
    gains = signed[torch.arange(len(matched)), matched]
    # Calibration: how far +1 is from moving its factor by +1 standard deviation (unnamed directions have no
    # sign convention, so their |gain| is compared).
    gains_for_calibration = gains if matched_by == "name" else gains.abs()
    return {"matched_by": matched_by, "purity": per_direction.tolist(),
            "mean_purity": per_direction.mean().item(), "pure_factors": metrics.pure_count(per_direction, matched),
            "dci_disentanglement": disentanglement, "dci_completeness": completeness,
            "gain": gains.tolist(), "calibration_error": (gains_for_calibration - 1).abs().mean().item(),
            "factor_response": response.tolist(), "signed_response": signed.tolist()}


@torch.no_grad()
def _pixel_disentanglement(editor, generator, z: torch.Tensor, spread) -> dict:
    """Purity from pixel statistics (``pixel_factors``), never the regressor: the held-out instrument."""
    response = pixel_response(generator, editor, z, spread)
    matched_by, matched = _matched(editor, response)
    per_direction = purity(response, matched)
    return {"matched_by": matched_by, "purity": per_direction.tolist(), "mean_purity": per_direction.mean().item(),
            "pure_factors": metrics.pure_count(per_direction, matched), "response": response.tolist()}


def data_name(bundle: Bundle) -> str:
    """The data the bundle's generator was trained on (recorded by its recipe), else the built-in renders."""
    return bundle.manifest.get("training", {}).get("generator", {}).get("data", "shapes")


@torch.no_grad()
def generator_quality(bundle: Bundle, regressor, config: EvalConfig) -> dict:
    """The generator itself: Fréchet distance in ``regressor.features`` between its samples (prior latents) and
    real images (held out from training), with the distance between two real sets of the same size as the noise
    floor; and, for a generator that can encode, the reconstruction PSNR (dB) of held-out real images."""
    generator, n = bundle.generator.eval(), config.quality_samples
    data = make_dataset(data_name(bundle), seed=0, size=generator.image_shape[0])
    out: dict = {"data": data_name(bundle)}
    if regressor is not None:
        z = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(config.seed + 3))
        fake = torch.cat([regressor.features(generator(chunk)) for chunk in z.split(256)]).numpy()
        real = make_dataset(data_name(bundle), seed=config.seed, size=generator.image_shape[0])
        first, second = real.next_batch(n), real.next_batch(n)
        first, second = (regressor.features(images.expand(-1, 3, -1, -1)).numpy() for images in (first, second))
        out["frechet_to_real"] = metrics.frechet_distance(fake, first)
        out["frechet_real_floor"] = metrics.frechet_distance(second, first)
    if generator.can_encode:
        held_out = data.held_out(n)
        decoded = torch.cat([generator.decode(generator.encode(chunk)) for chunk in held_out.split(256)])
        psnr = metrics.psnr(decoded, held_out.expand(-1, 3, -1, -1))
        out["reconstruction_psnr"] = float(psnr.mean())
        out["reconstruction_images"] = len(held_out)
    return out


def probe_accuracy(editor, generator, config: EvalConfig, amount_range=(0.5, 1.5)) -> float:
    """Accuracy of a *fresh* reconstructor trained for ``probe_steps`` on the frozen editor's edits (which
    direction moved), on 512 held-out edits: distinguishability without the co-adaptation of training."""
    rng = torch.Generator().manual_seed(config.seed + 1)
    count, d = editor.num_directions, editor.latent_dim

    def batch(n):
        z = torch.randn(n, d, generator=rng)
        k = torch.randint(count, (n,), generator=rng)
        size = amount_range[0] + (amount_range[1] - amount_range[0]) * torch.rand(n, generator=rng)
        sign = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0)
        amounts = torch.zeros(n, count)
        amounts[torch.arange(n), k] = size * sign
        with torch.no_grad():
            return generator(z), generator(editor.edit(z, amounts)), k

    torch.manual_seed(config.seed)
    probe = Reconstructor(count)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-3)
    for _ in range(config.probe_steps):
        before, after, k = batch(config.probe_batch)
        loss = F.cross_entropy(probe(before, after)[0], k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    probe.eval()
    with torch.no_grad():
        before, after, k = batch(512)
        return (probe(before, after)[0].argmax(1) == k).float().mean().item()


@torch.no_grad()
def _quality(editor, generator, regressor, z: torch.Tensor, seed: int) -> dict:
    """Fréchet distance in regressor features between unedited and single-direction ±1 edits; typicality."""
    rng = torch.Generator().manual_seed(seed + 2)
    n, count = z.shape[0], editor.num_directions
    amounts = torch.zeros(n, count)
    amounts[torch.arange(n), torch.randint(count, (n,), generator=rng)] = torch.where(
        torch.rand(n, generator=rng) < 0.5, -1.0, 1.0)
    edited = editor.edit(z, amounts)
    out = {"atypicality": metrics.atypicality(edited), "atypicality_unedited": metrics.atypicality(z),
           "log_density_change": metrics.log_density_change(z, edited)}
    if regressor is not None:
        # Reference: both halves of the unedited latents, so the FD of sampling noise alone is known.
        half = n // 2
        plain = regressor.features(generator(z)).numpy()
        moved = regressor.features(generator(edited)).numpy()
        out["frechet"] = metrics.frechet_distance(plain[:half], moved[half:])
        out["frechet_noise_floor"] = metrics.frechet_distance(plain[:half], plain[half:])
    return out


def _cost(engine: TorchEngine, name: str, editor, repeats: int) -> dict:
    out = {}
    for batch in (1, 256):
        z = np.random.default_rng(0).standard_normal((batch, editor.latent_dim)).astype(np.float32)
        amounts = np.full((batch, editor.num_directions), 0.5, dtype=np.float32)
        engine.edit(name, z, amounts)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            engine.edit(name, z, amounts)
            times.append(time.perf_counter() - t0)
        out[f"ms_batch{batch}"] = 1e3 * float(np.median(times))
    return out


def x_edit(bundle: Bundle) -> dict | None:
    """For a generator that encodes, on shapes drawn with Pillow: how far an ``x = +1`` edit moves the pixel
    centroid (``real_images.measure``: encode → edit → decode, measured from the images; no regressor)."""
    if not bundle.generator.can_encode or "x" not in bundle.editors[bundle.default_editor].directions:
        return None
    from curvedit.api import Model
    from curvedit.evaluation.real_images import measure

    return measure(Model(bundle, engine="torch"), "x", 1.0)


def evaluate_bundle(bundle: Bundle, label: str, config: EvalConfig, progress=print) -> dict:
    """Every editor of ``bundle``, and its generator's quality; returns a JSON-ready dict.

    A generator that samples (the PixelCNN: 256 network passes per image) gets the measurements that need fewer
    renders: its quality and the ``x`` edit from images, per editor the latent geometry (commutation, loops,
    round trip, curvature on ``h``), typicality and cost, and for the default editor alone purity (regressor and
    pixels; every render with the default seed, so an edit's before and after share their random numbers); the
    other image measurements (pixel and factor commutation, the probe, the edit Fréchet distance, other editors'
    purity) are left out."""
    generator = bundle.generator.eval()
    renders = not generator.samples
    factors = factor_space(bundle)
    regressor = bundle.regressor.eval() if bundle.regressor is not None else None
    z = torch.randn(config.samples, generator.latent_dim, generator=torch.Generator().manual_seed(config.seed))
    engine = TorchEngine(bundle)
    result = {"label": label, "path": str(bundle.path), "generator": bundle.manifest["generator"]["kind"],
              "generator_config": bundle.manifest["generator"]["config"], "editors": {},
              "factors_from": "true factors" if generator.true_factors() is not None else
              "regressor" if regressor is not None else None}
    result.update(generator.evaluation_facts(config.ceiling_steps, bundle.manifest.get("training", {})))
    result["quality"] = generator_quality(bundle, regressor, config)
    result["x_edit"] = x_edit(bundle)
    # Pixel statistics read the built-in renders' shapes; other data (digits) has no such factors.
    spread = (real_spread(config.pixel_spread_samples, size=generator.image_shape[0])
              if data_name(bundle) == "shapes" else None)
    for name, editor in bundle.editors.items():
        t0 = time.time()
        editor.eval()
        entry = {"kind": editor.kind, "mode": bundle.manifest["editors"][name].get("mode"),
                 "directions": editor.directions, "needs_training": editor.needs_training,
                 "commutative_by_design": editor.commutative}
        entry["geometry"] = _geometry(editor, generator if renders else None, factors, z, config)
        purity_here = renders or name == bundle.default_editor
        if factors is not None and purity_here:
            entry["factors"] = _disentanglement(editor, factors, z)
        if spread is not None and purity_here:
            entry["pixels"] = _pixel_disentanglement(editor, generator, z, spread)
        entry["approach"] = editor.approach
        entry["probe_accuracy"] = probe_accuracy(editor, generator, config) if renders else None
        entry["quality"] = _quality(editor, generator, regressor if renders else None, z, config.seed)
        entry["cost"] = _cost(engine, name, editor, config.timing_repeats)
        entry["seconds"] = time.time() - t0
        result["editors"][name] = entry
        progress(f"  {label} / {name}: {entry['seconds']:.1f} s")
    return result
