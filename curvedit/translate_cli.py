"""``curvedit translate``: show an input of one model's domain in another's (a photo-style face as its avatar)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import curvedit
from curvedit.commands import parse_edit
from curvedit.errors import InputError
from curvedit.images import read_image_files
from curvedit.models.files import image_grid, labelled_grid, read_latents, save_npy, save_png


def source_for(target: str) -> str:
    """The shipped model that holds an alignment to ``target``, when exactly one does."""
    holders = [name for name in curvedit.list_models() if target in curvedit.load(name, engine="torch").alignments]
    if len(holders) != 1:
        found = f"the shipped models aligned to it are {holders}" if holders else "no shipped model aligns to it"
        raise InputError(f"--model is needed to translate to {target!r}: {found}")
    return holders[0]


def cmd_translate(args: argparse.Namespace) -> int:
    model = curvedit.load(args.model or source_for(args.to), engine=args.engine)
    target = curvedit.load(args.to, engine=args.engine)
    if args.image and args.latents:
        raise InputError("pass --image files or --latents, not both")
    if args.image:
        images = read_image_files(args.image, model.image_shape)
        z = model.encode(images)
        labels = [Path(p).name for p in args.image]
    else:
        z = read_latents(args.latents) if args.latents else model.sample(args.count, seed=args.seed)
        images, labels = None, [str(i) for i in range(len(z))]
    edits = dict(args.edit or [])
    source_latents = model.edit(z, edits) if edits else model.check_latents(z)
    translated = model.translate(source_latents, to=args.to)
    pictures = target.generate(translated)
    out = Path(args.out)
    save_png(image_grid(pictures, columns=len(pictures), pad=0 if len(pictures) == 1 else 2), out)
    save_npy(out.with_suffix(".npy"), translated)
    rows = [model.generate(source_latents), pictures]
    names = ["decoded" if images is not None else model.name, args.to]
    if images is not None:
        rows, names = [images, *rows], ["input", *names]
    if edits:
        names[-2] = f"{names[-2]}, edited"
    if args.sheet:
        save_png(labelled_grid(np.concatenate(rows), columns=len(z), zoom=args.zoom, row_labels=names,
                               column_labels=labels), args.sheet)
    sheet = f", sheet → {args.sheet}" if args.sheet else ""
    print(f"translated {len(z)} {model.name} input(s){f' edited by {edits}' if edits else ''} to {args.to} → "
          f"{out} (latents: {out.with_suffix('.npy')}){sheet}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("translate", help="show images (or latents) of one model in an aligned "
                                                     "model's domain, e.g. a photo-style face as its avatar")
    parser.add_argument("--to", required=True, metavar="NAME", help="the target model (e.g. faces-avatar)")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="the source model (default: the shipped model aligned to --to)")
    parser.add_argument("--engine", default="auto", help="auto, torch, onnxruntime or triton (default: auto)")
    parser.add_argument("--image", action="append", default=None, metavar="FILE",
                        help="a real image to translate (repeatable; fitted to the source model's size; "
                             "default: none, sample latents)")
    parser.add_argument("--latents", default=None,
                        help=".npy of the source model's latents float32 [n, d] (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="without --image/--latents: first seed (default 0)")
    parser.add_argument("--count", type=int, default=4, help="without --image/--latents: latents (default 4)")
    parser.add_argument("--edit", type=parse_edit, action="append", metavar="NAME=AMOUNT",
                        help="edit in the source model first (repeatable; the same as editing the result; "
                             "default: none)")
    parser.add_argument("--out", default="out/translate.png",
                        help="PNG of the translated image(s), one row (default out/translate.png); the target "
                             "latents go beside it as .npy")
    parser.add_argument("--sheet", default=None, metavar="FILE.png",
                        help="also write a labelled sheet: input, decoded, translated (default: none)")
    parser.add_argument("--zoom", type=int, default=3, help="pixel zoom of the sheet (default 3)")
    parser.set_defaults(func=cmd_translate)
