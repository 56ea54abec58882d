"""``curvedit train generator | regressor | editor | default``.

``train default`` is the whole recipe of the shipped bundle: factor regressor, GAN, supervised DeCurvEd
editor, then the bundle. Each stage's output lands in the run directory, and a finished stage is reused on
rerun, so an interrupted recipe resumes (the GAN from its last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from curvedit.bundle import add_editor, load_bundle, save_weights, write_bundle
from curvedit.models.editors import EDITOR_KINDS, TRAINING_DEFAULTS, build_editor
from curvedit.models.files import write_json
from curvedit.models.generator import Generator, GeneratorConfig
from curvedit.models.regressor import FactorRegressor, RegressorTrainConfig, train_regressor
from curvedit.models.renderer import FACTOR_NAMES
from curvedit.models.train_editor import EditorTrainConfig, train_editor
from curvedit.models.train_generator import GANTrainConfig, train_generator

DEFAULT_EDITOR_TRAINING = EditorTrainConfig(mode="supervised", steps=2500, lr=1e-3, regulariser_weight=0.1)


def load_generator(run_dir: Path) -> Generator:
    config = json.loads((run_dir / "generator_config.json").read_text())
    generator = Generator(GeneratorConfig(**config))
    generator.load_state_dict(load_file(run_dir / "generator.safetensors"))
    return generator.eval()


def load_regressor(path: Path) -> FactorRegressor:
    if not path.is_file():
        raise ValueError(f"factor regressor {path} not found: run `curvedit train regressor --out {path}` first")
    regressor = FactorRegressor()
    regressor.load_state_dict(load_file(path))
    return regressor.eval()


def run_generator(out: Path, latent_dim: int, steps: int, seed: int, progress: bool = True) -> Generator:
    config = GeneratorConfig(latent_dim=latent_dim)
    out.mkdir(parents=True, exist_ok=True)
    generator = train_generator(out, config, GANTrainConfig(steps=steps, seed=seed), progress=progress)
    write_json(out / "generator_config.json", config.to_dict())  # after train_generator accepted the run dir
    return generator


def run_regressor(out: Path, steps: int, seed: int, progress: bool = True) -> FactorRegressor:
    regressor, error = train_regressor(RegressorTrainConfig(steps=steps, seed=seed), progress=progress)
    save_weights(out.parent, out.name, regressor)
    write_json(out.with_suffix(".json"), {"steps": steps, "seed": seed, "held_out_mae": error.tolist()})
    return regressor


def editor_directions(mode: str, count: int) -> list[str]:
    return list(FACTOR_NAMES[:count]) if mode == "supervised" else [f"d{k}" for k in range(count)]


def cmd_generator(args: argparse.Namespace) -> int:
    run_generator(Path(args.out), args.latent_dim, args.steps, args.seed)
    print(f"sample grid: {Path(args.out) / 'samples.png'}")
    return 0


def cmd_regressor(args: argparse.Namespace) -> int:
    run_regressor(Path(args.out), args.steps, args.seed)
    print(f"factor regressor → {args.out}")
    return 0


def cmd_editor(args: argparse.Namespace) -> int:
    """Train (or, for ganspace/sefa/chart, fit) an editor of any kind and add it to the bundle."""
    from curvedit.models.fit_editors import make_editor

    bundle = load_bundle(args.bundle)
    regressor = bundle.regressor
    if args.regressor:
        regressor = load_regressor(Path(args.regressor))
    latent_dim = bundle.generator.config.latent_dim
    count = args.directions or (len(FACTOR_NAMES) if args.mode == "supervised" else latent_dim)
    directions = editor_directions(args.mode, count)
    config = EditorTrainConfig(mode=args.mode, steps=args.steps, lr=args.lr, amount_min=args.amount_min,
                               amount_max=args.amount_max, regulariser_weight=args.regulariser_weight,
                               seed=args.seed)
    options = {"orthonormal": True} if args.orthonormal else {}
    if args.orthonormal and args.method != "linear":
        raise ValueError("--orthonormal applies to --method linear only")
    if args.no_mixing:
        if args.method != "decurved":
            raise ValueError("--no-mixing applies to --method decurved only")
        options["mixing"] = False
    editor, report = make_editor(args.method, bundle.generator, directions, config, regressor=regressor,
                                 options=options, measure_samples=args.measure_samples, checkpoint=args.checkpoint)
    report["config"] = config.to_dict()
    name = args.name or f"{args.method}-{args.mode}"
    add_editor(args.bundle, name, editor, args.mode, report, make_default=args.make_default)
    print_report(name, report)
    return 0


def print_report(name: str, report: dict) -> None:
    if "reconstructor_accuracy" in report:
        print(f"{name}: reconstructor accuracy {report['reconstructor_accuracy']:.3f} on 512 held-out edits")
    if "purity" in report:
        per = ", ".join(f"{k} {v:.2f}" for k, v in report["purity"].items())
        gains = ", ".join(f"{k} {v:.2f}" for k, v in report["gain"].items())
        print(f"{name}: purity per direction: {per}; mean {report['mean_purity']:.3f}")
        print(f"{name}: |Δ factor| per unit amount: {gains}")


def cmd_default(args: argparse.Namespace) -> int:
    """Regressor → GAN → supervised DeCurvEd → bundle, each stage reused if already finished; the GAN and the
    editor resume from their checkpoints in the run directory."""
    run, seed = Path(args.run), args.seed
    torch.manual_seed(seed)
    seconds: dict[str, float | str] = {}  # per stage; "reused" where an earlier run had finished it

    def stage(name: str, done: bool, load, train):
        start = time.time()
        result = load() if done else train()
        seconds[name] = "reused" if done else round(time.time() - start)
        return result

    regressor_path, gan_dir = run / "regressor.safetensors", run / "generator"
    regressor = stage("regressor", regressor_path.is_file(), lambda: load_regressor(regressor_path),
                      lambda: run_regressor(regressor_path, args.regressor_steps, seed))
    generator = stage("generator", (gan_dir / "generator.safetensors").is_file(), lambda: load_generator(gan_dir),
                      lambda: run_generator(gan_dir, args.latent_dim, args.generator_steps, seed))
    latent_dim = generator.config.latent_dim  # a reused GAN keeps the latent dim it was trained with
    editor = build_editor("decurved", {"latent_dim": latent_dim, "directions": list(FACTOR_NAMES),
                                       **TRAINING_DEFAULTS["decurved"]})
    config = EditorTrainConfig(**{**DEFAULT_EDITOR_TRAINING.to_dict(), "steps": args.editor_steps, "seed": seed})
    report = stage("editor", False, None, lambda: train_editor(editor, generator, config, regressor=regressor,
                                                               checkpoint=run / "editor_checkpoint.pt"))
    report["config"] = config.to_dict()
    recipe = {"command": "curvedit train default", "seed": seed, "latent_dim": latent_dim,
              "regressor_steps": args.regressor_steps, "generator_steps": args.generator_steps,
              "editor_steps": args.editor_steps, "seconds": seconds}
    write_bundle(args.out, name="shapes32", version=args.version, generator=generator,
                 editors={"decurved": (editor, "supervised", report)}, default_editor="decurved",
                 regressor=regressor, seed=seed, training=recipe)
    print_report("decurved", report)
    print(f"bundle → {args.out} (seconds per stage: {seconds})")
    return 0


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train generators, regressors and editors")
    sub = train.add_subparsers(dest="what", required=True, metavar="WHAT")

    gen = sub.add_parser("generator", help="train the GAN on the built-in renders (resumable)")
    gen.add_argument("--out", default="runs/generator", help="run directory (resumes if it has a checkpoint)")
    gen.add_argument("--latent-dim", type=int, default=8)
    gen.add_argument("--steps", type=int, default=GANTrainConfig.steps)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=cmd_generator)

    reg = sub.add_parser("regressor", help="train the factor regressor on labelled renders")
    reg.add_argument("--out", default="runs/regressor.safetensors")
    reg.add_argument("--steps", type=int, default=RegressorTrainConfig.steps)
    reg.add_argument("--seed", type=int, default=0)
    reg.set_defaults(func=cmd_regressor)

    ed = sub.add_parser("editor", help="train (or fit: ganspace, sefa, chart) an editor on a bundle's frozen "
                        "generator and add it to the bundle")
    ed.add_argument("--bundle", required=True, help="bundle directory to read the generator from and add to")
    ed.add_argument("--method", default="decurved", choices=sorted(EDITOR_KINDS))
    ed.add_argument("--mode", default="supervised", choices=["supervised", "unsupervised"])
    ed.add_argument("--name", default=None, help="editor name in the bundle (default: METHOD-MODE)")
    ed.add_argument("--directions", type=int, default=None, help="K (default: 6 factors, or latent dim)")
    ed.add_argument("--regressor", default=None, help="factor regressor (default: the bundle's)")
    ed.add_argument("--steps", type=int, default=EditorTrainConfig.steps)
    ed.add_argument("--lr", type=float, default=EditorTrainConfig.lr)
    ed.add_argument("--amount-min", type=float, default=EditorTrainConfig.amount_min)
    ed.add_argument("--amount-max", type=float, default=EditorTrainConfig.amount_max)
    ed.add_argument("--regulariser-weight", type=float, default=EditorTrainConfig.regulariser_weight)
    ed.add_argument("--seed", type=int, default=0)
    ed.add_argument("--orthonormal", action="store_true", help="linear only: orthonormal direction matrix")
    ed.add_argument("--checkpoint", default=None,
                    help="file to save training progress to; rerun the same command to resume from it")
    ed.add_argument("--no-mixing", action="store_true",
                    help="decurved only: no linear mixing layer before the couplings (the paper's plain flow)")
    ed.add_argument("--measure-samples", type=int, default=512,
                    help="latents used to label and measure fitted editors (ganspace, sefa)")
    ed.add_argument("--make-default", action="store_true", help="make it the bundle's default editor")
    ed.set_defaults(func=cmd_editor)

    default = sub.add_parser("default", help="the shipped bundle's whole recipe: regressor, GAN, editor")
    default.add_argument("--out", default="runs/default/bundle")
    default.add_argument("--run", default="runs/default", help="where intermediate stages are kept")
    default.add_argument("--seed", type=int, default=0)
    default.add_argument("--latent-dim", type=int, default=8)
    default.add_argument("--regressor-steps", type=int, default=RegressorTrainConfig.steps)
    default.add_argument("--generator-steps", type=int, default=GANTrainConfig.steps)
    default.add_argument("--editor-steps", type=int, default=DEFAULT_EDITOR_TRAINING.steps)
    default.add_argument("--version", default="1.0.0")
    default.set_defaults(func=cmd_default)
