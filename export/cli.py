"""``curvedit export [--model NAME|PATH] [--out DIR]``: write verified ONNX graphs into a bundle (or a copy);
``--triton-repo DIR`` writes a Triton Inference Server model repository instead (``triton_repo``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from curvedit.export import EXPORTERS
from curvedit.extras import require_extra


def cmd_export(args: argparse.Namespace) -> int:
    require_extra("export", "writing ONNX graphs")
    from curvedit.api import resolve_model
    from curvedit.bundle import read_manifest
    from curvedit.export.onnx_export import export_bundle

    bundle = resolve_model(args.model)
    read_manifest(bundle)  # a clear BundleError (a ValueError) before anything is copied
    if args.triton_repo is not None:
        from curvedit.export.triton_repo import write_triton_repo

        for folder in write_triton_repo(bundle, args.triton_repo, args.max_batch_size, args.exporter):
            print(f"wrote   {folder}/config.pbtxt" + ("" if (folder / "1" / "model.onnx").exists()
                                                      else " (ensemble)"))
        print(f"Triton model repository in {args.triton_repo}: tritonserver --model-repository "
              f"{Path(args.triton_repo).resolve()}")
        return 0
    logging.getLogger("curvedit.export").setLevel(logging.ERROR)  # skips are printed below instead
    results = export_bundle(bundle, out=args.out, exporter=args.exporter)
    target = Path(args.out) if args.out is not None else bundle
    for r in results:
        if r.written:
            print(f"wrote   {target / r.filename}  ({r.size / 1024:.0f} KiB, opset {r.opset}, "
                  f"max |onnx - eager| {r.max_abs_err:.1e})")
        else:
            print(f"skipped {r.filename}: {r.reason}")
    written = sum(r.written for r in results)
    print(f"{written} of {len(results)} graphs verified and listed in {target / 'manifest.json'}")
    return 0 if written else 1


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export", help="export ONNX graphs (generator, flow, edits) into a bundle",
        description="Export the bundle's generator, flow halves and editors to ONNX with a dynamic batch axis. "
                    "Each graph is checked with ONNX Runtime against PyTorch on other batch sizes before it is "
                    "written; one that fails is skipped (that editor then runs on PyTorch).")
    export.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="a shipped model's name or a bundle directory (default: shapes32); exports in place "
                             "unless --out is given")
    export.add_argument("--out", default=None,
                        help="copy the bundle to this new directory and export there (default: in place)")
    export.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="torch.export-based 'dynamo' (default) or the legacy, faster 'torchscript'")
    export.add_argument("--triton-repo", default=None, metavar="DIR",
                        help="write a Triton Inference Server model repository (ONNX models with dynamic "
                             "batching, an ensemble z, t → z_edited, images) into DIR instead (default: none)")
    export.add_argument("--max-batch-size", type=int, default=256,
                        help="max_batch_size of the --triton-repo models (default 256)")
    export.set_defaults(func=cmd_export)
