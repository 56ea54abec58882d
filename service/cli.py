"""``curvedit serve``, ``curvedit client ...`` and ``curvedit batch``."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
from pathlib import Path

import numpy as np

from curvedit.commands import parse_edit
from curvedit.service.config import ServeConfig

_SERVE_FLAGS = ("host", "port", "http_port", "metrics_host", "metrics_port", "engine", "ort_threads",
                "max_batch_size",
                "max_queue_delay_ms",
                "max_queue_size", "max_items_per_request", "max_concurrent_requests", "grace_s", "max_message_mb",
                "tls_cert", "tls_key", "tls_client_ca", "auth_token_file", "model_repository", "repository_poll_s",
                "repository_versions", "log_format", "log_requests", "ready_when", "cache_dir", "workers")


def _flags(args: argparse.Namespace) -> dict:
    """The serve flags the user actually gave (argparse defaults are None so env/file can fill the rest)."""
    flags = {name: getattr(args, name) for name in _SERVE_FLAGS}
    flags["models"] = tuple(args.model or ())
    flags["expect_digests"] = tuple(args.expect_digest or ())
    if args.no_warmup:
        flags["warmup"] = False
    if args.no_reflection:
        flags["reflection"] = False
    return flags


def cmd_serve(args: argparse.Namespace) -> int:
    from curvedit.service.config import build_config
    from curvedit.service.logs import setup_logging
    from curvedit.service.server import serve_until_signal

    config = build_config(_flags(args), os.environ, args.config)
    setup_logging(config.log_format)
    announce = lambda line: print(line, flush=True)  # noqa: E731
    if config.workers > 1:
        from curvedit.service.workers import serve_workers

        return asyncio.run(serve_workers(config, announce))
    return asyncio.run(serve_until_signal(config, announce))


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    add = serve.add_argument
    add("--host", default=None, help=f"address to bind (default {d.host}; a non-loopback address without TLS or "
        "tokens prints a warning)")
    add("--port", type=int, default=None, help=f"gRPC port (default {d.port}; 0 = any free port)")
    add("--http-port", type=int, default=None,
        help=f"the Open Inference Protocol over HTTP/REST on --host (default {d.http_port}, as Triton; 0 = any "
             "free port, -1 = off); its gRPC side is always on --port")
    add("--metrics-host", default=None, help=f"address of the /metrics HTTP server (default {d.metrics_host})")
    add("--metrics-port", type=int, default=None,
        help=f"/metrics port (default {d.metrics_port}; 0 = any free port, -1 = off)")
    add("--model", action="append", default=None, metavar="NAME|PATH",
        help="a shipped model's name or a bundle directory, repeatable; the first is the default model "
             "(default: every shipped model whose generator does not sample, shapes32 first; "
             "shapes-pixelcnn when named)")
    add("--model-repository", default=None, metavar="DIR",
        help="serve the models of DIR/<name>/<version>/ (each version a bundle, Triton's layout) instead of "
             "--model: the newest version of each takes requests, new versions are verified and warmed up before "
             "they take traffic, and OIP RepositoryModelLoad/Unload load and unload models (default: none)")
    add("--repository-poll-s", type=float, default=None, metavar="SECONDS",
        help="rescan --model-repository this often for new and removed versions (default 0 = only at start "
             "and on load RPCs)")
    add("--repository-versions", type=int, default=None, metavar="N",
        help=f"how many of each model's newest versions stay loaded, so requests may name one (default "
             f"{d.repository_versions})")
    add("--log-format", default=None, choices=("text", "json"),
        help=f"log lines as text or as one JSON object per line (default {d.log_format})")
    add("--log-requests", action="store_true", default=None,
        help="log one line per request: request id, model, method, status code, duration (default: off; a "
             "line per request costs throughput)")
    add("--expect-digest", action="append", default=None, metavar="DIGEST",
        help="repeatable, one per --model in the same order: refuse to start unless that bundle's digest "
             "(`curvedit info` prints it; 12+ leading hex digits) matches (default: no pin)")
    add("--engine", default=None, help=f"auto, torch, onnxruntime or triton (default {d.engine})")
    add("--ort-threads", type=int, default=None, metavar="N",
        help="ONNX Runtime intra-op threads per model (default 0 = every core this process may use)")
    add("--max-batch-size", type=int, default=None,
        help=f"most items in one batch (default {d.max_batch_size}; 1 = batching off)")
    add("--max-queue-delay-ms", type=float, default=None, metavar="MS",
        help="a batch leaves at once when its model's compute is idle (not under sustained load); items queued "
             "while it computes wait for it to finish, then at most this long (from the oldest) for company, "
             f"in ms (default {d.max_queue_delay_ms:g})")
    add("--max-queue-size", type=int, default=None, metavar="ITEMS",
        help=f"items waiting for a batch before new requests get RESOURCE_EXHAUSTED (default {d.max_queue_size})")
    add("--max-items-per-request", type=int, default=None, metavar="ITEMS",
        help=f"most items (latents or seeds) in one request (default {d.max_items_per_request})")
    add("--max-concurrent-requests", type=int, default=None, metavar="N",
        help=f"unary RPCs plus stream messages in progress before new ones get RESOURCE_EXHAUSTED "
             f"(default {d.max_concurrent_requests})")
    add("--grace-s", type=float, default=None, metavar="SECONDS",
        help=f"how long SIGTERM waits for accepted work, in seconds (default {d.grace_s:g})")
    add("--max-message-mb", type=int, default=None, metavar="MIB",
        help=f"largest request or response message, in MiB (default {d.max_message_mb})")
    add("--tls-cert", default=None, metavar="PEM", help="certificate chain: serve TLS only (default: plaintext)")
    add("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert (default: none)")
    add("--tls-client-ca", default=None, metavar="PEM",
        help="CA bundle: require client certificates it signed, mutual TLS (default: none)")
    add("--auth-token-file", default=None, metavar="FILE",
        help="bearer tokens, one per line: every RPC but health needs one (default: no tokens)")
    add("--config", default=None, metavar="FILE",
        help="JSON or TOML file with the same settings (default: none); flags > CURVEDIT_* env > file")
    add("--no-warmup", action="store_true", help="skip warm-up: SERVING at once (default: warm every bucket)")
    add("--workers", type=int, default=None, metavar="N",
        help="front-end processes on the same ports before one engine process that holds the models and "
             "batches across them (default 1: one process serves and computes)")
    add("--ready-when", default=None, choices=("default", "all"),
        help="SERVING once the default (first) model is warm, the others then warming one by one and each taking "
             "requests once warm, or once every model is warm (default: default)")
    add("--cache-dir", default=None, metavar="DIR",
        help="where warm-up keeps what it learns for the next start (the engine's route per batch bucket, per "
             "bundle, machine and software; default $XDG_CACHE_HOME/curvedit or ~/.cache/curvedit; 'off' = none)")
    add("--no-reflection", action="store_true", help="switch gRPC server reflection off (default: on)")


# -- client -----------------------------------------------------------------------------------------------------
def _security(args):
    from curvedit.service.channels import Security

    return Security(ca_file=args.ca_file, cert_file=args.client_cert, key_file=args.client_key,
                    token_file=args.token_file, tls=args.tls)


def _client(args):
    from curvedit.client import Client

    return Client(args.server, timeout=args.timeout, security=_security(args))


def unreachable_message(target: str, details: str) -> str | None:
    """One line for a server that cannot be reached, or ``None`` when the UNAVAILABLE came from a server."""
    if "draining" in details or "server stopped" in details:
        return None  # the server's own answer, which already says what to do
    lowered = details.lower()
    if "handshake" in lowered or "ssl" in lowered or "certificate" in lowered:
        return (f"cannot set up TLS with {target}: check --ca-file (the CA that signed the server's certificate) "
                "and, for mutual TLS, --client-cert/--client-key; drop them if the server is plaintext")
    return (f"no server at {target} (UNAVAILABLE); start one with `curvedit serve` (or pass --server HOST:PORT; "
            "add --ca-file if it serves TLS)")


def _friendly(func):
    """Turn "cannot reach the server" into one line naming the fix (other answers pass through as they are)."""
    @functools.wraps(func)
    def run(args):
        import grpc

        try:
            return func(args)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and getattr(args, "server", None):
                message = unreachable_message(args.server, exc.details() or "")
                if message is not None:
                    raise ValueError(message) from None
            raise
    return run


def add_security_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-file", default=None, metavar="PEM",
                   help="CA that signed the server's certificate: use TLS (default: plaintext)")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's CA roots (default: plaintext)")
    p.add_argument("--client-cert", default=None, metavar="PEM",
                   help="this client's certificate, for mutual TLS (default: none)")
    p.add_argument("--client-key", default=None, metavar="PEM",
                   help="private key of --client-cert (default: none)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="send the token on its first line as `authorization: Bearer` (default: no token)")


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
    if args.image:
        return _client_edit_images(args, edits)
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


def _read_files(paths) -> list[bytes]:
    try:
        return [Path(p).read_bytes() for p in paths]
    except OSError as exc:
        raise ValueError(f"cannot read image {exc.filename}: {exc.strerror}") from None


def _client_edit_images(args, edits: dict) -> int:
    """``--image``: the server encodes, edits and decodes the files; writes NN_edited.png and edited.npy."""
    from PIL import Image

    from curvedit.models.files import save_npy, save_png

    files = _read_files(args.image)
    with _client(args) as client:
        result = client.edit(input_images=files, edits=edits, model=args.model or "", editor=args.editor or "",
                             images="raw")
    out = Path(args.out)
    save_npy(out / "edited.npy", result.latents)
    for i, image in enumerate(result.images):
        save_png(Image.fromarray(image), out / f"{i:02d}_edited.png")
    print(f"edited {len(files)} image(s) with {edits} on {result.model} {result.model_version} → "
          f"{out}/NN_edited.png, edited.npy")
    return 0


def cmd_client_encode(args) -> int:
    from curvedit.models.files import save_npy

    with _client(args) as client:
        latents = client.encode(_read_files(args.image), model=args.model or "")
    save_npy(args.out, latents)
    print(f"encoded {len(latents)} image(s) → {args.out} (float32 {list(latents.shape)})")
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
    ray_flags = [f"--{name.replace('_', '-')}" for name in _RAY_FLAGS if getattr(args, name) is not None]
    if ray_flags and not args.ray:
        raise ValueError(f"{ray_flags[0]} is an option of --ray: add --ray, or drop it to run in-process")
    job = BatchJob(out=Path(args.out), edits=dict(args.edit or []), latents_path=args.input, seeds=seeds,
                   editor=args.editor or "", model=args.model, engine=args.engine, server=args.server,
                   shard_size=args.shard_size, chunk_size=args.chunk_size, max_in_flight=args.max_in_flight,
                   png=args.png, pace_s=args.pace_s, progress=not args.quiet,
                   security=_security(args) if args.server else None)
    if args.ray:
        from curvedit.service.ray_job import RayOptions, run_ray_job

        summary = run_ray_job(job, RayOptions(address=args.ray_address, workers=args.ray_workers,
                                              cpus_per_worker=args.ray_cpus_per_worker or 1.0,
                                              gpus_per_worker=args.ray_gpus_per_worker))
    else:
        summary = run_batch_job(job)
    on = f" on {summary['workers']} Ray workers" if "workers" in summary else ""
    print(json.dumps(summary) if args.json else
          f"{summary['items']} items in {summary['shards']} shards → {summary['out']} "
          f"({summary['computed']} computed now{on}, {summary['skipped_shards']} shards already done; "
          f"{summary['items_per_s']:.0f} items/s)")
    return 0


_RAY_FLAGS = ("ray_address", "ray_workers", "ray_cpus_per_worker", "ray_gpus_per_worker")


def add_ray_options(add) -> None:
    add("--ray", action="store_true",
        help="run the job as a Ray Data pipeline, an actor pool holding the model (needs curvedit[ray]; "
             "default: off, in-process)")
    add("--ray-address", default=None, metavar="HOST:PORT",
        help="an existing Ray cluster's GCS address, or auto (default: start a local Ray on this machine's CPUs)")
    add("--ray-workers", type=int, default=None, metavar="N",
        help="actors, each holding the model (default: one per GPU where the cluster has GPUs, else one per "
             "--ray-cpus-per-worker CPUs)")
    add("--ray-cpus-per-worker", type=float, default=None, metavar="CPUS",
        help="CPUs each actor reserves and computes on (default 1)")
    add("--ray-gpus-per-worker", type=float, default=None, metavar="GPUS",
        help="GPUs each actor reserves (default: 1 where the cluster has GPUs, else 0)")


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="the batched gRPC edit service (Ctrl-C / SIGTERM drains)")
    add_serve_options(serve)
    serve.set_defaults(func=cmd_serve)

    client = subparsers.add_parser("client", help="call a running server")
    csub = client.add_subparsers(dest="client_command", required=True, metavar="ACTION")

    def action(name: str, func, help: str) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=help)
        p.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT",
                       help="the server to call; several, separated by commas, or dns:///NAME:PORT of several "
                            "addresses are balanced per call, with retries (default 127.0.0.1:50051)")
        p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="deadline of each call, in seconds (default 60)")
        add_security_options(p)
        p.set_defaults(func=_friendly(func))
        return p

    action("models", cmd_client_models, "list the served models, editors and directions")
    health = action("health", cmd_client_health, "grpc.health.v1 status (exit 0 iff SERVING)")
    health.add_argument("--service", default="",
                        help="service to ask about (default: empty, the whole server)")
    encode = action("encode", cmd_client_encode, "encode image files to latents (models that can encode)")
    encode.add_argument("--model", default=None, metavar="NAME",
                        help="served model name (default: the server's default model)")
    encode.add_argument("--image", action="append", required=True, metavar="FILE",
                        help="image file, repeatable, at least one (required; fitted to the model's size by "
                             "the server)")
    encode.add_argument("--out", default="out/latents.npy", metavar="NPY",
                        help="where to write float32 [n, d] (default out/latents.npy)")
    for name, func, help in (("edit", cmd_client_edit, "edit seeds (or --image files); write edited.npy and "
                              "PNGs"),
                             ("traverse", cmd_client_traverse, "PNG strip along one direction")):
        p = action(name, func, help)
        p.add_argument("--model", default=None, metavar="NAME",
                       help="served model name (default: the server's default model)")
        p.add_argument("--editor", default=None, help="editor name (default: the model's default editor)")
        p.add_argument("--seed", type=int, default=0, help="seed of the (first) latent (default 0)")
        if name == "edit":
            p.add_argument("--count", type=int, default=4, help="latents, from seeds SEED.. (default 4)")
            p.add_argument("--edit", type=parse_edit, action="append", metavar="NAME=AMOUNT",
                           help="direction and amount, repeatable, at least one (default: none)")
            p.add_argument("--out", default="out/client-edit", metavar="DIR",
                           help="output directory (default out/client-edit)")
            p.add_argument("--image", action="append", default=None, metavar="FILE",
                           help="repeatable: edit these image files instead of seeds (models that can encode; "
                                "default: none)")
        else:
            p.add_argument("--direction", required=True, help="direction to move along (required)")
            p.add_argument("--range", type=float, default=1.5, metavar="T",
                           help="amounts from -T to +T (default 1.5)")
            p.add_argument("--steps", type=int, default=7, help="frames (default 7)")
            p.add_argument("--out", default="out/client-traverse.png", metavar="PNG",
                           help="output image (default out/client-traverse.png)")

    batch = subparsers.add_parser("batch", help="edit many latents into sharded .npy files (resumable)")
    add = batch.add_argument
    add("input", nargs="?", default=None, help=".npy/.npz of float32 [n, d] (default: none, use --seeds)")
    add("--seeds", default=None, metavar="START:STOP", help="latents from seeds START..STOP-1 (default: none)")
    add("--edit", type=parse_edit, action="append", metavar="NAME=AMOUNT",
        help="direction and amount, repeatable, at least one (default: none)")
    add("--out", required=True, metavar="DIR",
        help="output directory; rerun with the same one to resume (required)")
    add("--server", default=None, metavar="HOST:PORT",
        help="a `curvedit serve` to compute on (default: in-process)")
    add("--model", default=None, help="shipped model name or bundle path (in-process, --ray) or served model name "
        "(with --server) (default: the shipped model / the server's default)")
    add("--engine", default="auto",
        help="engine in-process or in the Ray workers: auto, torch, onnxruntime or triton (default auto)")
    add("--editor", default=None, help="editor name (default: the model's default editor)")
    add("--shard-size", type=int, default=1024, metavar="ITEMS", help="items per output .npy (default 1024)")
    add("--chunk-size", type=int, default=256, metavar="ITEMS",
        help="items per request, or per engine call in-process and on Ray (default 256)")
    add("--max-in-flight", type=int, default=4, metavar="N", help="request messages in flight (default 4)")
    add("--png", action="store_true", help="also write images/NNNNNNNN.png per item (default: off)")
    add("--json", action="store_true", help="print the summary as JSON (default: one line of text)")
    add("--quiet", action="store_true", help="no progress bar (default: a progress bar on stderr)")
    add("--pace-s", type=float, default=0.0, help=argparse.SUPPRESS)  # kill tests and demos
    add_ray_options(add)
    add_security_options(batch)
    batch.set_defaults(func=_friendly(cmd_batch))
