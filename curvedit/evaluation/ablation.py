"""What makes supervised DeCurvEd pure on a curved known chart: one training per variant, measured like the table.

Each variant changes the baseline recipe of ``curvedit eval`` as it was before this ablation (the known chart at
``--curvature``, supervised DeCurvEd, 8 coupling layers of width 64 with the warm-started mixing layer, 2,000 Adam
steps at lr 3e-3, batch 64, regulariser 0.1, constant learning rate) in the named ways (``--method`` trains another
editor kind with the same variants of the training), trains, and measures on the evaluation's held-out
latents (``EvalConfig``: 512 latents, seed 20261127): mean purity (matched by name, true factors), factors with a
direction of purity > 0.8, relative commutation error in Z and the round trip at amount 1, and training seconds.
Finished variants are kept in ``--work`` (one JSON each) and reused, so a rerun only trains what is new.

    python -m curvedit.evaluation.ablation --curvature 1.2 --work runs/ablation --out docs/ablation
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from curvedit.evaluation.evaluate import EvalConfig, _disentanglement, _geometry
from curvedit.evaluation.prepare import PrepareConfig
from curvedit.models.files import atomic_write, write_json
from curvedit.models.fit_editors import make_editor
from curvedit.models.known_chart import KnownChart, KnownChartConfig
from curvedit.models.renderer import FACTOR_NAMES
from curvedit.models.train_editor import EditorTrainConfig

# DeCurvEd as the evaluation trained it before this ablation (TRAINING_DEFAULTS then): every variant starts here,
# whatever the defaults are now, so the table stays reproducible after a default changes.
BASELINE_OPTIONS = {"mixing": True, "layers": 8}
VARIANT_TEXT = {"baseline": "the evaluation's recipe", "cosine": "cosine learning-rate decay",
                "deep": "cosine, 16 coupling layers"}
# name → (what changes, training overrides, DeCurvEd constructor options over BASELINE_OPTIONS)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "baseline": ("the evaluation's recipe", {}, {}),
    "no-mixing": ("no mixing layer (plain coupling flow)", {}, {"mixing": False}),
    "cosine": ("cosine learning-rate decay", {"lr_schedule": "cosine"}, {}),
    "steps8k": ("8,000 steps", {"steps": 8000}, {}),
    "steps8k-cosine": ("8,000 steps, cosine decay", {"steps": 8000, "lr_schedule": "cosine"}, {}),
    "off-target": ("cosine, off-target weight 5", {"lr_schedule": "cosine", "off_target_weight": 5.0}, {}),
    "batch256": ("cosine, batch 256", {"lr_schedule": "cosine", "batch_size": 256}, {}),
    "wide": ("cosine, hidden width 128", {"lr_schedule": "cosine"}, {"hidden": 128}),
    "deep": ("cosine, 16 coupling layers", {"lr_schedule": "cosine"}, {"layers": 16}),
    "off-target-constant": ("off-target weight 5", {"off_target_weight": 5.0}, {}),
    "off-target-10": ("off-target weight 10", {"off_target_weight": 10.0}, {}),
    "off-target-8k": ("8,000 steps, cosine, off-target weight 5",
                      {"steps": 8000, "lr_schedule": "cosine", "off_target_weight": 5.0}, {}),
    "deep-constant": ("16 coupling layers", {}, {"layers": 16}),
    "deep24": ("cosine, 24 coupling layers", {"lr_schedule": "cosine"}, {"layers": 24}),
    "deep-off-target": ("cosine, 16 layers, off-target weight 5", {"lr_schedule": "cosine",
                                                                   "off_target_weight": 5.0}, {"layers": 16}),
    # Training seeds other than 0: how much of a difference is noise.
    **{f"{name}-seed{seed}": (f"{VARIANT_TEXT[name]}, training seed {seed}", {**overrides, "seed": seed}, options)
       for name, overrides, options in (("baseline", {}, {}), ("cosine", {"lr_schedule": "cosine"}, {}),
                                        ("deep", {"lr_schedule": "cosine"}, {"layers": 16}))
       for seed in (1, 2)},
}


def baseline_config(curvature: float) -> EditorTrainConfig:
    """The supervised training ``curvedit eval`` gives DeCurvEd on a known chart (``prepare_known_chart``)."""
    prepare = PrepareConfig(curvature=curvature, steps=2000)
    return EditorTrainConfig(mode="supervised", steps=prepare.steps, lr=prepare.lr, regulariser_weight=0.1,
                             seed=prepare.seed)


def run_variant(name: str, curvature: float, overrides: dict, options: dict, method: str = "decurved") -> dict:
    """Train one variant of ``method`` (constructor ``options`` apply to DeCurvEd only) and measure it."""
    if options and method != "decurved":
        raise ValueError(f"variant {name!r} changes DeCurvEd's constructor; it does not apply to {method!r}")
    options = {**BASELINE_OPTIONS, **options} if method == "decurved" else {}
    generator = KnownChart(KnownChartConfig(curvature=curvature)).eval()
    config = replace(baseline_config(curvature), **overrides)
    t0 = time.time()
    editor, _ = make_editor(method, generator, list(FACTOR_NAMES), config, options=options, progress=False)
    seconds = time.time() - t0
    evaluation = EvalConfig(amounts=(1.0,))
    z = torch.randn(evaluation.samples, generator.latent_dim,
                    generator=torch.Generator().manual_seed(evaluation.seed))
    factors = generator.true_factors()
    disentanglement = _disentanglement(editor.eval(), factors, z)
    geometry = _geometry(editor, generator, factors, z, evaluation)["amount=1"]
    return {"variant": name, "method": method, "curvature": curvature, "config": config.to_dict(),
            "options": options, "seconds": round(seconds),
            "mean_purity": disentanglement["mean_purity"], "purity": disentanglement["purity"],
            "pure_factors": disentanglement["pure_factors"], "commutation_latent": geometry["commutation_latent"],
            "round_trip": geometry["round_trip"], "threads": torch.get_num_threads()}


def markdown(results: list[dict]) -> str:
    lines = ["| editor | variant | what changes | purity | pure | comm. Z | round trip | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.get('method', 'decurved')} | {r['variant']} | {VARIANTS[r['variant']][0]} | "
                     f"{r['mean_purity']:.3f} | "
                     f"{r['pure_factors']} | {r['commutation_latent']:.1e} | {r['round_trip']:.1e} | "
                     f"{r['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curvature", type=float, default=1.2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work", default="runs/ablation", help="one JSON per finished variant (reused)")
    parser.add_argument("--out", default="docs/ablation", help="writes OUT.md and OUT.json")
    parser.add_argument("--method", default="decurved", help="editor kind (default decurved)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name in args.variants:
        kind = "" if args.method == "decurved" else f"{args.method}-"
        cache = Path(args.work) / f"c{args.curvature:g}-{kind}{name}.json"
        if cache.is_file():
            result = json.loads(cache.read_text())
        else:
            result = run_variant(name, args.curvature, *VARIANTS[name][1:], method=args.method)
            write_json(cache, result)
        print(f"{name}: purity {result['mean_purity']:.3f}, comm {result['commutation_latent']:.1e} "
              f"({result['seconds']} s)", flush=True)
        results.append(result)
    out = Path(args.out)
    command = (f"python -m curvedit.evaluation.ablation --curvature {args.curvature:g} --method {args.method} "
               f"--variants {' '.join(args.variants)} --work {args.work} --out {args.out} "
               f"--threads {args.threads}")
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(f"Generated by `{command}`\n\n"
                                                                          + markdown(results)))
    write_json(out.with_suffix(".json"), {"command": command, "results": results})
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
