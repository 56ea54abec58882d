"""Commands for people: ``curvedit edit``, ``curvedit traverse``, ``curvedit info``, ``curvedit models``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import curvedit
from curvedit.images import read_image_files
from curvedit.models.files import image_grid, labelled_grid, read_latents, save_npy, save_png

MODEL_HELP = "a shipped model's name (see `curvedit models`) or a bundle directory (default: shapes32)"


def add_model_options(parser: argparse.ArgumentParser, editor: bool = True) -> None:
    """``--model`` and ``--engine`` (and ``--editor``): the options every model-using command shares."""
    parser.add_argument("--model", default=None, metavar="NAME|PATH", help=MODEL_HELP)
    parser.add_argument("--engine", default="auto", help="auto, torch, onnxruntime or triton (default: auto)")
    if editor:
        parser.add_argument("--editor", default=None, help="editor name (default: the model's default editor)")


def parse_edit(text: str) -> tuple[str, float]:
    """``NAME=AMOUNT`` → ``(name, amount)``."""
    name, sep, amount = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT (e.g. scale=1.5), got {text!r}")
    try:
        return name, float(amount)
    except ValueError:
        raise argparse.ArgumentTypeError(f"amount in {text!r} is not a number (e.g. scale=1.5)") from None


def read_state(path: str) -> dict:
    """A state file as the browser studio downloads it: ``{"model": NAME, "editor": NAME, "z": [[...]] (float
    [n, d], or one flat row), "edits": {direction: amount}}``; other keys (``format``, ``source``) are ignored."""
    try:
        state = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read state file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"state file {path} is not JSON ({exc}); pass a file the studio's 'download JSON' "
                         "wrote") from None
    if not isinstance(state, dict) or "z" not in state:
        raise ValueError(f"state file {path} must be a JSON object with `z` (the latents) and `edits`")
    edits = state.get("edits", {})
    if not isinstance(edits, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in edits.values()):
        raise ValueError(f"state file {path}: `edits` must map direction names to numbers, got {edits!r:.80}")
    for key in ("model", "editor"):
        if state.get(key) is not None and not isinstance(state[key], str):
            raise ValueError(f"state file {path}: `{key}` must be a name (a string), got {state[key]!r:.40}")
    try:
        z = np.asarray(state["z"], dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"state file {path}: `z` must be a list of rows of numbers") from None
    return {"model": state.get("model"), "editor": state.get("editor"), "edits": dict(edits),
            "z": z[None] if z.ndim == 1 else z}


def load_latents(args: argparse.Namespace, model: curvedit.Model) -> np.ndarray:
    if getattr(args, "state_z", None) is not None:
        return model.check_latents(args.state_z)
    if args.latents is not None:
        return model.check_latents(read_latents(args.latents))
    return model.sample(args.count, seed=args.seed)


def cmd_edit(args: argparse.Namespace) -> int:
    edits = {}
    if args.state is not None:  # the flags win over the file: --model, --editor, and --edit per direction
        if args.image or args.latents is not None:
            raise ValueError("pass --state alone: it holds the latents (not with --image or --latents)")
        state = read_state(args.state)
        args.model, args.editor = args.model or state["model"], args.editor or state["editor"]
        args.state_z, edits = state["z"], state["edits"]
    model = curvedit.load(args.model, engine=args.engine)
    edits.update(args.edit or [])
    if not edits:
        raise ValueError(f"give at least one --edit NAME=AMOUNT; directions: {model.directions_of(args.editor)}")
    if args.image and args.latents is not None:
        raise ValueError("pass either --image files or --latents, not both")
    out = Path(args.out)
    if args.image:
        return _edit_images(model, args, edits, out)
    z = load_latents(args, model)
    edited = model.edit(z, edits, editor=args.editor)
    save_npy(out / "latents.npy", z)
    save_npy(out / "edited.npy", edited)
    images = model.generate(np.concatenate([z, edited]))
    save_png(image_grid(images, columns=len(z), zoom=args.zoom), out / "edit.png")
    print(f"edited {len(z)} latents with {edits} → {out}/latents.npy, edited.npy, edit.png (top: input)")
    return 0


def _edit_images(model: curvedit.Model, args: argparse.Namespace, edits: dict, out: Path) -> int:
    """Real images: encode → edit → decode; per image ``NN_input.png`` / ``NN_edited.png`` and one sheet."""
    model.require_encoder()
    images = read_image_files(args.image, model.image_shape)
    z = model.encode(images)
    edited = model.edit(z, edits, editor=args.editor)
    outputs = model.generate(np.concatenate([z, edited]))
    reconstructed, after = outputs[: len(z)], outputs[len(z) :]
    save_npy(out / "latents.npy", z)
    save_npy(out / "edited.npy", edited)
    for i, (before, result) in enumerate(zip(images, after, strict=True)):
        save_png(image_grid(before[None], columns=1, pad=0), out / f"{i:02d}_input.png")
        save_png(image_grid(result[None], columns=1, pad=0), out / f"{i:02d}_edited.png")
    sheet = labelled_grid(np.concatenate([images, reconstructed, after]), columns=len(z), zoom=args.zoom,
                          row_labels=["input", "decoded", "edited"],
                          column_labels=[Path(p).name for p in args.image])
    save_png(sheet, out / "edit.png")
    print(f"edited {len(z)} image(s) with {edits} → {out}/NN_input.png, NN_edited.png, edit.png "
          "(rows: input, its reconstruction, edited)")
    return 0


def cmd_traverse(args: argparse.Namespace) -> int:
    model = curvedit.load(args.model, engine=args.engine)
    names = args.direction or model.directions_of(args.editor)
    z = model.sample(1, seed=args.seed)
    steps = np.linspace(-args.range, args.range, args.steps, dtype=np.float32)
    rows = []
    for name in names:
        amounts = model.amounts({name: 1.0}, len(steps), args.editor) * steps[:, None]
        latents = model.edit(np.repeat(z, len(steps), 0), amounts, editor=args.editor)
        rows.append(model.generate(latents))
    grid = labelled_grid(np.concatenate(rows), columns=len(steps), zoom=args.zoom, row_labels=list(names),
                         column_labels=[f"{t:+.2g}" for t in steps])
    save_png(grid, args.out)
    print(f"traversal of {names} from {-args.range:g} to {args.range:g} (one row each) → {args.out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if args.name is not None and args.model is not None:
        raise ValueError("name the model once: `curvedit info NAME|PATH` or `curvedit info --model NAME|PATH`")
    model = curvedit.load(args.name or args.model, engine="torch")
    manifest = model.bundle.manifest
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    print(f"bundle      {model.bundle.path}")
    print(f"name        {model.name} (version {model.version}, format {manifest['format_version']})")
    print(f"digest      {model.digest}")
    encode = "yes" if model.can_encode else "no"
    print(f"latent dim  {model.latent_dim}    image shape {list(model.image_shape)}    encodes images: {encode}")
    print(f"generator   {manifest['generator']['kind']} {manifest['generator']['config']}")
    for name, entry in manifest["editors"].items():
        default = " (default)" if name == model.default_editor else ""
        directions = ", ".join(f"{d['index']}:{d['name']}" for d in entry["directions"])
        print(f"editor      {name}{default}: {entry['kind']}, {entry['mode']}; directions {directions}")
        measured = {k: entry["training"][k] for k in ("mean_purity", "reconstructor_accuracy")
                    if k in entry.get("training", {})}
        if measured:
            print(f"            measured at training: {measured}")
    for target, entry in manifest.get("alignments", {}).items():
        print(f"alignment   to {target} (its bundle {entry['target']['digest'][:12]}…, editor "
              f"{entry['target']['editor']}): `curvedit translate --model {model.name} --to {target}`")
    print(f"files       {len(manifest['files'])} (sha256 verified; manifest consistent with its weights)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.copy:
        return copy_model(args.copy, args.out)
    for name in curvedit.list_models():
        model = curvedit.load(name, engine="torch")
        encode = ", encodes images" if model.can_encode else ""
        print(f"{name:12s} {model.family:6s} d={model.latent_dim} image={list(model.image_shape)}{encode}; "
              f"editors {model.editors}; directions {model.directions}")
    return 0


def copy_model(name: str, out: str | None) -> int:
    """A shipped model as a bundle folder that stands on its own (e.g. a model repository's NAME/1/): copied
    beside ``out`` and renamed into place, so a half-written copy never looks complete."""
    import shutil

    from curvedit.api import resolve_model
    from curvedit.bundle import copy_bundle

    if not out:
        raise SystemExit("curvedit models --copy needs --out DIR (e.g. /models/NAME/1 for a model repository)")
    target = Path(out)
    if target.exists():
        raise SystemExit(f"curvedit models --copy: {target} exists; pass a new folder (a repository version is "
                         "never rewritten in place: add the next version number)")
    source = resolve_model(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    copy_bundle(source, partial)
    partial.rename(target)
    print(f"{name}: {sum(f.stat().st_size for f in target.iterdir()) / 1e6:.1f} MB bundle in {target}")
    return 0


def register(subparsers) -> None:
    edit = subparsers.add_parser("edit", help="edit latents (or real images) and render before/after images")
    add_model_options(edit)
    edit.add_argument("--latents", default=None, help=".npy of float32 [n, d] (default: sample from --seed)")
    edit.add_argument("--state", default=None, metavar="FILE.json",
                      help="a state the browser studio downloaded: its model, editor, latents and amounts "
                           "(--model, --editor and --edit override it; default: none)")
    edit.add_argument("--image", action="append", default=None, metavar="FILE",
                      help="repeatable: real image files to encode, edit and decode (models that can encode; "
                           "fitted to the model's size: centre-cropped, resized; default: none)")
    edit.add_argument("--seed", type=int, default=0, help="first seed of the sampled latents (default 0)")
    edit.add_argument("--count", type=int, default=8, help="latents sampled from --seed on (default 8)")
    edit.add_argument("--edit", type=parse_edit, action="append", metavar="NAME=AMOUNT",
                      help="repeatable, at least one (or a --state); amounts in standardised units for "
                           "supervised editors (default: none)")
    edit.add_argument("--out", default="out/edit", help="output directory (default out/edit)")
    edit.add_argument("--zoom", type=int, default=3, help="pixel zoom of the PNG sheet (default 3)")
    edit.set_defaults(func=cmd_edit)

    traverse = subparsers.add_parser("traverse", help="PNG grid: one labelled row per direction, columns -T..+T")
    add_model_options(traverse)
    traverse.add_argument("--seed", type=int, default=0, help="seed of the latent to traverse from (default 0)")
    traverse.add_argument("--direction", action="append", default=None, help="repeatable (default: all)")
    traverse.add_argument("--range", type=float, default=1.5, help="T: amounts span [-T, +T] (default 1.5)")
    traverse.add_argument("--steps", type=int, default=7, help="columns (default 7)")
    traverse.add_argument("--out", default="out/traverse.png", help="PNG to write (default out/traverse.png)")
    traverse.add_argument("--zoom", type=int, default=3, help="pixel zoom (default 3)")
    traverse.set_defaults(func=cmd_traverse)

    info = subparsers.add_parser("info", help="what a model holds, with its digest (checksums verified)")
    info.add_argument("name", nargs="?", default=None, metavar="NAME|PATH", help=MODEL_HELP)
    info.add_argument("--model", default=None, metavar="NAME|PATH", help="the same, as every command takes it "
                                                                         "(default: shapes32)")
    info.add_argument("--json", action="store_true", help="print the whole manifest (default: a summary)")
    info.set_defaults(func=cmd_info)

    models = subparsers.add_parser("models", help="list the shipped models (or copy one out: --copy)")
    models.add_argument("--copy", default=None, metavar="NAME", help="write shipped model NAME as a bundle folder "
                        "that stands on its own, e.g. into a model repository (default: list them)")
    models.add_argument("--out", default=None, metavar="DIR", help="the new folder --copy writes, e.g. "
                        "/models/NAME/1 (default: none; --copy needs it)")
    models.set_defaults(func=cmd_models)
