"""Evaluate every editor of a bundle: commutation, loops, round trips, curvature, purity, probe, quality, cost.

Latents are held out from every training seed (``EvalConfig.seed``); the same latents serve every editor.
Factors are the generator's own ``true_factors()`` where it has them (the known-chart family: ``ψ(z)``), and the
bundle's factor regressor on renders otherwise.
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
from curvedit.models.measure import factor_response, purity
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
        # Pixel and factor spaces need renders: measured at the table's amount only.
        if t == 1.0 and pairs:
            row["commutation_pixel"] = np.mean([metrics.commutation_error(editor.edit, z, count, a, b, t, t,
                                                                          generator) for a, b in pairs])
            if factors is not None:
                row["commutation_factor"] = np.mean([metrics.commutation_error(editor.edit, z, count, a, b, t, t,
                                                                               factors) for a, b in pairs])
        out[f"amount={t:g}"] = {k: float(v) for k, v in row.items()}
    return out


@torch.no_grad()
def _disentanglement(editor, factors, z: torch.Tensor) -> dict:
    response = factor_response(factors, editor, torch.nn.Identity(), z, amount=1.0)
    supervised = all(d in FACTOR_NAMES for d in editor.directions)
    matched = [FACTOR_NAMES.index(d) for d in editor.directions] if supervised else response.argmax(1).tolist()
    per_direction = purity(response, matched)
    disentanglement, completeness = metrics.dci(response)
    return {"matched_by": "name" if supervised else "argmax", "purity": per_direction.tolist(),
            "mean_purity": per_direction.mean().item(), "pure_factors": metrics.pure_count(per_direction, matched),
            "dci_disentanglement": disentanglement, "dci_completeness": completeness,
            "factor_response": response.tolist()}


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


def evaluate_bundle(bundle: Bundle, label: str, config: EvalConfig, progress=print) -> dict:
    """Every editor of ``bundle``; returns a JSON-ready dict."""
    generator = bundle.generator.eval()
    factors = factor_space(bundle)
    regressor = bundle.regressor.eval() if bundle.regressor is not None else None
    z = torch.randn(config.samples, generator.latent_dim, generator=torch.Generator().manual_seed(config.seed))
    engine = TorchEngine(bundle)
    result = {"label": label, "path": str(bundle.path), "generator": bundle.manifest["generator"]["kind"],
              "generator_config": bundle.manifest["generator"]["config"], "editors": {}}
    result.update(generator.evaluation_facts(config.ceiling_steps, bundle.manifest.get("training", {})))
    for name, editor in bundle.editors.items():
        t0 = time.time()
        editor.eval()
        entry = {"kind": editor.kind, "mode": bundle.manifest["editors"][name].get("mode"),
                 "directions": editor.directions, "needs_training": editor.needs_training,
                 "commutative_by_design": editor.commutative}
        entry["geometry"] = _geometry(editor, generator, factors, z, config)
        if factors is not None:
            entry["factors"] = _disentanglement(editor, factors, z)
        entry["probe_accuracy"] = probe_accuracy(editor, generator, config)
        entry["quality"] = _quality(editor, generator, regressor, z, config.seed)
        entry["cost"] = _cost(engine, name, editor, config.timing_repeats)
        entry["seconds"] = time.time() - t0
        result["editors"][name] = entry
        progress(f"  {label} / {name}: {entry['seconds']:.1f} s")
    return result
