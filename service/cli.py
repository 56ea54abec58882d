"""``curvedit serve``, ``curvedit client ...`` and ``curvedit batch``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path

import numpy as np

from curvedit.commands import parse_edit


def _flags(args: argparse.Namespace) -> dict:
    """The serve flags the user actually gave (argparse defaults are None so env/file can fill the rest)."""
    names = ("host", "port", "metrics_port", "engine", "max_batch_size", "max_queue_delay_ms", "max_queue_size",
             "max_items_per_request", "grace_s")
    flags = {name: getattr(args, name) for name in names}
    flags["models"] = tuple(args.model or ())
    if args.no_warmup:
        flags["warmup"] = False
    return flags


def cmd_serve(args: argparse.Namespace) -> int:
    from curvedit.service.config import build_config
    from curvedit.service.server import serve_until_signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = build_config(_flags(args), os.environ, args.config)
    return asyncio.run(serve_until_signal(config, announce=lambda line: print(line, flush=True)))


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1; env CURVEDIT_HOST)")
    serve.add_argument("--port", type=int, default=None, help="gRPC port (default 50051; 0 = any free port)")
    serve.add_argument("--metrics-port", type=int, default=None, help="/metrics port (default 8002; -1 = off)")
    serve.add_argument("--model", action="append", default=None, metavar="PATH",
                       help="bundle directory, repeatable; the first is the default (default: the shipped model)")
    serve.add_argument("--engine", default=None, help="auto, torch, onnxruntime or triton (default auto)")
    serve.add_argument("--max-batch-size", type=int, default=None, help="items per batch (default 256; 1 = off)")
    serve.add_argument("--max-queue-delay-ms", type=float, default=None,
                       help="longest wait of the oldest queued item before its batch runs (default 5)")
    serve.add_argument("--max-queue-size", type=int, default=None, help="queued items before RESOURCE_EXHAUSTED")
    serve.add_argument("--max-items-per-request", type=int, default=None, help="default 4096")
    serve.add_argument("--grace-s", type=float, default=None, help="SIGTERM drain bound in seconds (default 10)")
    serve.add_argument("--config", default=None, help="JSON or TOML file with the same settings")
    serve.add_argument("--no-warmup", action="store_true", help="skip warm-up (SERVING at once)")


# -- client -----------------------------------------------------------------------------------------------------
def _client(args):
    from curvedit.client import Client

    return Client(args.server, timeout=args.timeout)


def cmd_client_models(args) -> int:
    with _client(args) as client:
        for info in client.list_models():
            for editor in info.editors:
                directions = ", ".join(f"{d.index}:{d.name}" for d in editor.directions)
                default = " (default)" if editor.name == info.default_editor else ""
                print(f"{info.name} {info.version} d={info.latent_dim} image={list(info.image_shape)} "
                      f"engine={info.engine} editor {editor.name}{default}: {directions}")
    return 0


def cmd_client_health(args) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_client_edit(args) -> int:
    from curvedit.models.files import image_grid, save_npy, save_png

    edits = dict(args.edit or [])
    if not edits:
        raise ValueError("give at least one --edit NAME=AMOUNT (see `curvedit client models` for directions)")
    seeds = range(args.seed, args.seed + args.count)
    with _client(args) as client:
        result = client.edit(seeds=seeds, edits=edits, model=args.model or "", editor=args.editor or "",
                             images="raw")
        before = client.generate(seeds=seeds, model=args.model or "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_npy(out / "edited.npy", result.latents)
    save_png(image_grid(np.concatenate([before, result.images]), columns=args.count, zoom=3), out / "edit.png")
    print(f"edited seeds {args.seed}..{args.seed + args.count - 1} with {edits} on {result.model} "
          f"{result.model_version} → {out}/edited.npy, edit.png (top: input)")
    return 0


def cmd_client_traverse(args) -> int:
    from curvedit.models.files import image_grid, save_png
    from curvedit.service import codec

    with _client(args) as client:
        frames = list(client.traverse(args.direction, seed=args.seed, start=-args.range, stop=args.range,
                                      steps=args.steps, model=args.model or "", editor=args.editor or "",
                                      images="raw"))
    images = np.concatenate([codec.from_images(f.image) for f in frames])
    save_png(image_grid(images, columns=len(frames), zoom=3), args.out)
    print(f"{len(frames)} frames along {args.direction} → {args.out}")
    return 0


def cmd_batch(args) -> int:
    from curvedit.service.batch_job import BatchJob, run_batch_job

    seeds = None
    if args.seeds is not None:
        start, sep, stop = args.seeds.partition(":")
        if not sep or not start.isdigit() or not stop.isdigit():
            raise ValueError(f"--seeds must be START:STOP (e.g. 0:10000), got {args.seeds!r}")
        seeds = (int(start), int(stop))
    job = BatchJob(out=Path(args.out), edits=dict(args.edit or []), latents_path=args.input, seeds=seeds,
                   editor=args.editor or "", model=args.model, engine=args.engine, server=args.server,
                   shard_size=args.shard_size, chunk_size=args.chunk_size, max_in_flight=args.max_in_flight,
                   png=args.png, pace_s=args.pace_s, progress=not args.quiet)
    summary = run_batch_job(job)
    print(json.dumps(summary) if args.json else
          f"{summary['items']} items in {summary['shards']} shards → {summary['out']} "
          f"({summary['computed']} computed now, {summary['skipped_shards']} shards already done; "
          f"{summary['items_per_s']:.0f} items/s)")
    return 0


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="the batched gRPC edit service (Ctrl-C / SIGTERM drains)")
    add_serve_options(serve)
    serve.set_defaults(func=cmd_serve)

    client = subparsers.add_parser("client", help="call a running server")
    csub = client.add_subparsers(dest="client_command", required=True, metavar="ACTION")

    def action(name: str, func, help: str) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=help)
        p.add_argument("--server", default="127.0.0.1:50051", help="host:port (default 127.0.0.1:50051)")
        p.add_argument("--timeout", type=float, default=60.0)
        p.set_defaults(func=func)
        return p

    action("models", cmd_client_models, "list the served models, editors and directions")
    health = action("health", cmd_client_health, "grpc.health.v1 status (exit 0 iff SERVING)")
    health.add_argument("--service", default="")
    for name, func, help in (("edit", cmd_client_edit, "edit seeds; write edited.npy and a before/after PNG"),
                             ("traverse", cmd_client_traverse, "PNG strip along one direction")):
        p = action(name, func, help)
        p.add_argument("--model", default=None, help="model name (default: the server's default)")
        p.add_argument("--editor", default=None)
        p.add_argument("--seed", type=int, default=0)
        if name == "edit":
            p.add_argument("--count", type=int, default=4)
            p.add_argument("--edit", type=parse_edit, action="append", metavar="NAME=AMOUNT")
            p.add_argument("--out", default="out/client-edit")
        else:
            p.add_argument("--direction", required=True)
            p.add_argument("--range", type=float, default=1.5)
            p.add_argument("--steps", type=int, default=7)
            p.add_argument("--out", default="out/client-traverse.png")

    batch = subparsers.add_parser("batch", help="edit many latents into sharded .npy files (resumable)")
    batch.add_argument("input", nargs="?", default=None, help=".npy/.npz of float32 [n, d] (or use --seeds)")
    batch.add_argument("--seeds", default=None, metavar="START:STOP", help="latents from seeds START..STOP-1")
    batch.add_argument("--edit", type=parse_edit, action="append", metavar="NAME=AMOUNT", help="repeatable")
    batch.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    batch.add_argument("--server", default=None, help="host:port of `curvedit serve` (default: in-process)")
    batch.add_argument("--model", default=None, help="bundle path (in-process) or model name (with --server)")
    batch.add_argument("--engine", default="auto", help="in-process engine (default auto)")
    batch.add_argument("--editor", default=None)
    batch.add_argument("--shard-size", type=int, default=1024, help="items per output .npy (default 1024)")
    batch.add_argument("--chunk-size", type=int, default=256, help="items per request (default 256)")
    batch.add_argument("--max-in-flight", type=int, default=4, help="request messages in flight (default 4)")
    batch.add_argument("--png", action="store_true", help="also write images/NNNNNNNN.png per item")
    batch.add_argument("--json", action="store_true", help="print the summary as JSON")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.add_argument("--pace-s", type=float, default=0.0, help=argparse.SUPPRESS)  # kill tests and demos
    batch.set_defaults(func=cmd_batch)
