"""``curvedit train generator | regressor | editor | recipe | default``.

``train recipe NAME`` is the whole recipe of a shipped model (``curvedit.recipes``); ``train default`` is the
recipe of the default model, ``shapes32``. Each stage's output lands in the run directory, and a finished stage
is reused on rerun, so an interrupted recipe resumes (the generator and every editor from their checkpoints).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import load_file

from curvedit.bundle import add_editor, load_bundle, save_weights, weights_meta
from curvedit.extras import require_extra
from curvedit.models.editors import EDITOR_KINDS
from curvedit.models.files import write_json
from curvedit.models.generator import GeneratorConfig
from curvedit.models.regressor import FactorRegressor, RegressorTrainConfig, train_regressor
from curvedit.models.renderer import FACTOR_NAMES
from curvedit.models.train_editor import EditorTrainConfig
from curvedit.models.train_generator import GANTrainConfig
from curvedit.models.vae import VAEConfig, VAETrainConfig
from curvedit.recipes import RECIPES, run_recipe, train_run_generator


def load_regressor(path: Path) -> FactorRegressor:
    if not path.is_file():
        raise ValueError(f"factor regressor {path} not found: run `curvedit train regressor --out {path}` first")
    regressor = FactorRegressor()
    regressor.load_state_dict(load_file(path))
    return regressor.eval()


def editor_directions(mode: str, count: int) -> list[str]:
    return list(FACTOR_NAMES[:count]) if mode == "supervised" else [f"d{k}" for k in range(count)]


def cmd_generator(args: argparse.Namespace) -> int:
    if args.family == "dcgan":
        if args.data != "shapes":
            raise ValueError("the dcgan family trains on --data shapes only")
        config, train = GeneratorConfig(latent_dim=args.latent_dim), GANTrainConfig(seed=args.seed)
    else:
        config = VAEConfig(latent_dim=args.latent_dim, channels=1 if args.data == "digits" else 3)
        train = VAETrainConfig(data=args.data, beta=args.beta, seed=args.seed)
    if args.steps is not None:
        train = type(train)(**{**train.to_dict(), "steps": args.steps})
    train_run_generator(Path(args.out), args.family, config, train)
    print(f"generator → {args.out} (sample grid: {Path(args.out) / 'samples.png'})")
    return 0


def cmd_regressor(args: argparse.Namespace) -> int:
    out = Path(args.out)
    regressor, error = train_regressor(RegressorTrainConfig(steps=args.steps, seed=args.seed))
    save_weights(out.parent, out.name, regressor, weights_meta("regressor", "factor-cnn", regressor.config()))
    write_json(out.with_suffix(".json"), {"steps": args.steps, "seed": args.seed, "held_out_mae": error.tolist()})
    print(f"factor regressor → {args.out}")
    return 0


def _train_config(args: argparse.Namespace) -> EditorTrainConfig:
    return EditorTrainConfig(mode=args.mode, steps=args.steps, lr=args.lr, amount_min=args.amount_min,
                             amount_max=args.amount_max, regulariser_weight=args.regulariser_weight,
                             seed=args.seed)


def cmd_user_editor(args: argparse.Namespace) -> int:
    """``--generator``: an editor on the user's own generator, written as a new bundle at ``--out``."""
    from curvedit.byo import UserEditorJob, train_user_editor
    from curvedit.engines import check_device

    if args.model is not None:
        raise ValueError("--generator trains on your generator and writes a new bundle to --out; "
                         "--model (add to an existing bundle) does not apply")
    if args.out is None:
        raise ValueError("--generator needs --out DIR: where to write the new bundle")
    mode = args.mode or "unsupervised"
    names = tuple(n.strip() for n in (args.directions or "").split(",") if n.strip())
    count = None
    if mode == "unsupervised" and names:
        if len(names) != 1 or not names[0].isdigit():
            raise ValueError("unsupervised --directions is a count K (directions d0..dK-1), e.g. --directions 4")
        count, names = int(names[0]), ()
    job = UserEditorJob(generator=args.generator, out=Path(args.out),
                        config=_train_config(argparse.Namespace(**{**vars(args), "mode": mode})),
                        method=args.method, latent_dim=args.latent_dim, regressor=args.regressor, directions=names,
                        count=count, name=args.name, device=check_device(args.device) or "cpu")
    path = train_user_editor(job)
    print(f"bundle → {path}; serve it with `curvedit serve --model {path}`")
    return 0


def cmd_editor(args: argparse.Namespace) -> int:
    """Train (or, for ganspace/sefa/chart, fit) an editor of any kind and add it to the bundle."""
    from curvedit.api import resolve_model
    from curvedit.models.fit_editors import make_editor

    if args.generator is not None:
        return cmd_user_editor(args)
    if args.model is None:
        raise ValueError("say which bundle to add the editor to (--model NAME|PATH), or train on your own "
                         "generator with --generator package.module:factory --out DIR")
    if args.out is not None or args.latent_dim is not None:
        raise ValueError("--out and --latent-dim go with --generator; with --model the editor is added in place")
    args.mode = args.mode or "supervised"
    if args.directions is not None and not str(args.directions).isdigit():
        raise ValueError(f"--directions is a count K here (the first K factors or d0..dK-1), got "
                         f"{args.directions}")
    path = resolve_model(args.model)
    bundle = load_bundle(path)
    regressor = bundle.regressor
    if args.regressor:
        regressor = load_regressor(Path(args.regressor))
    count = int(args.directions or 0) or (len(FACTOR_NAMES) if args.mode == "supervised"
                                          else bundle.generator.latent_dim)
    directions = editor_directions(args.mode, count)
    config = _train_config(args)
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
    add_editor(path, name, editor, args.mode, report, make_default=args.make_default)
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


def cmd_recipe(args: argparse.Namespace) -> int:
    name = getattr(args, "recipe", None) or "shapes32"
    if not args.no_export:  # checked before hours of training, not after
        require_extra("export", "writing the bundle's ONNX graphs",
                      alternative="pass --no-export to train without writing graphs")
    out = Path(args.out or f"runs/{name}/bundle")
    run = Path(args.run or f"runs/{name}")
    seconds = run_recipe(name, out, run, seed=args.seed, generator_steps=args.generator_steps,
                         editor_steps=args.editor_steps, regressor_steps=args.regressor_steps,
                         export=not args.no_export)
    print(f"bundle → {out} (seconds per stage: {seconds})")
    return 0


def _recipe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="bundle directory to write (default: runs/NAME/bundle)")
    parser.add_argument("--run", default=None, help="where intermediate stages are kept (default: runs/NAME)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage (default 0)")
    parser.add_argument("--generator-steps", type=int, default=None, help="override the recipe's generator "
                                                                          "steps (default: the recipe's)")
    parser.add_argument("--editor-steps", type=int, default=None, help="override every trained editor's steps "
                                                                       "(default: the recipe's)")
    parser.add_argument("--regressor-steps", type=int, default=None,
                        help="steps when the recipe trains its factor regressor (default: the recipe's, "
                             f"{RegressorTrainConfig.steps} for shapes32)")
    parser.add_argument("--no-export", action="store_true", help="skip writing the verified ONNX graphs "
                                                                 "(default: write them)")


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train generators, regressors and editors")
    sub = train.add_subparsers(dest="what", required=True, metavar="WHAT")

    gen = sub.add_parser("generator", help="train a generator on built-in data (resumable)")
    gen.add_argument("--family", default="dcgan", choices=["dcgan", "vae"],
                     help="generator family (default dcgan)")
    gen.add_argument("--data", default="shapes", choices=["shapes", "digits"],
                     help="training images: the built-in shape renders (default) or scikit-learn's digits")
    gen.add_argument("--out", default="runs/generator", help="run directory; resumes if it has a checkpoint "
                                                             "(default runs/generator)")
    gen.add_argument("--latent-dim", type=int, default=8, help="latent dimension d (default 8)")
    gen.add_argument("--steps", type=int, default=None,
                     help=f"training steps (default: dcgan {GANTrainConfig.steps}, vae {VAETrainConfig.steps})")
    gen.add_argument("--beta", type=float, default=1.0, help="vae only: weight of the KL term (default 1)")
    gen.add_argument("--seed", type=int, default=0, help="default 0")
    gen.set_defaults(func=cmd_generator)

    reg = sub.add_parser("regressor", help="train the factor regressor on labelled renders")
    reg.add_argument("--out", default="runs/regressor.safetensors",
                     help="weights file to write (default runs/regressor.safetensors)")
    reg.add_argument("--steps", type=int, default=RegressorTrainConfig.steps,
                     help=f"default {RegressorTrainConfig.steps}")
    reg.add_argument("--seed", type=int, default=0, help="default 0")
    reg.set_defaults(func=cmd_regressor)

    ed = sub.add_parser("editor", help="train (or fit: ganspace, sefa, chart) an editor on a model's frozen "
                        "generator and add it to the bundle, or on your own generator (--generator) into a new "
                        "bundle")
    ed.add_argument("--model", default=None, metavar="NAME|PATH",
                    help="bundle to read the generator from and add the editor to: a path, or a shipped name "
                         "(required unless --generator)")
    ed.add_argument("--generator", default=None, metavar="PACKAGE.MODULE:FACTORY",
                    help="your generator: a factory returning a torch module z [n, d] → images [n, C, H, W] in "
                         "[-1, 1]; the editor and the generator go into a new bundle at --out "
                         "(docs/BRING_YOUR_OWN.md; default: none)")
    ed.add_argument("--out", default=None, help="with --generator: the bundle directory to write (required there)")
    ed.add_argument("--latent-dim", type=int, default=None,
                    help="with --generator: d, if the module has no latent_dim attribute (default: the module's)")
    ed.add_argument("--device", default=None, help="with --generator: train on cpu or cuda (default cpu)")
    ed.add_argument("--method", default="decurved", choices=sorted(EDITOR_KINDS), help="default decurved")
    ed.add_argument("--mode", default=None, choices=["supervised", "unsupervised"],
                    help="supervised: directions tied to factors by a regressor (default with --model); "
                         "unsupervised: the reconstructor recipe (default with --generator)")
    ed.add_argument("--name", default=None,
                    help="editor name in the bundle (default METHOD-MODE); with --generator: the model's name "
                         "(default: the factory's module name)")
    ed.add_argument("--directions", default=None,
                    help="a count K (default: the 6 factors supervised, the latent dim unsupervised); with "
                         "--generator and --mode supervised: the names of the regressor's columns, e.g. x,y")
    ed.add_argument("--regressor", default=None,
                    help="with --model: factor regressor weights (default: the bundle's); with --generator: "
                         "PACKAGE.MODULE:FACTORY of a module mapping images to your attribute values")
    ed.add_argument("--steps", type=int, default=EditorTrainConfig.steps,
                    help=f"default {EditorTrainConfig.steps}")
    ed.add_argument("--lr", type=float, default=EditorTrainConfig.lr, help=f"default {EditorTrainConfig.lr:g}")
    ed.add_argument("--amount-min", type=float, default=EditorTrainConfig.amount_min,
                    help=f"smallest |amount| sampled in training (default {EditorTrainConfig.amount_min:g})")
    ed.add_argument("--amount-max", type=float, default=EditorTrainConfig.amount_max,
                    help=f"largest |amount| sampled in training (default {EditorTrainConfig.amount_max:g})")
    ed.add_argument("--regulariser-weight", type=float, default=EditorTrainConfig.regulariser_weight,
                    help=f"weight of the editor's regulariser (default {EditorTrainConfig.regulariser_weight:g})")
    ed.add_argument("--seed", type=int, default=0, help="default 0")
    ed.add_argument("--orthonormal", action="store_true", help="linear only: orthonormal direction matrix "
                                                               "(default: off)")
    ed.add_argument("--checkpoint", default=None,
                    help="file to save training progress to; rerun the same command to resume from it "
                         "(default: none, not resumable)")
    ed.add_argument("--no-mixing", action="store_true",
                    help="decurved only: no linear mixing layer before the couplings, the paper's plain flow "
                         "(default: with the layer)")
    ed.add_argument("--measure-samples", type=int, default=512,
                    help="latents used to label and measure fitted editors (ganspace, sefa; default 512)")
    ed.add_argument("--make-default", action="store_true", help="make it the bundle's default editor")
    ed.set_defaults(func=cmd_editor)

    recipe = sub.add_parser("recipe", help="a shipped model's whole recipe: regressor, generator, editors, "
                            "ONNX graphs")
    recipe.add_argument("recipe", choices=sorted(RECIPES), help="which shipped model")
    _recipe_options(recipe)
    recipe.set_defaults(func=cmd_recipe)

    default = sub.add_parser("default", help="the default model's recipe (= train recipe shapes32)")
    _recipe_options(default)
    default.set_defaults(func=cmd_recipe)
