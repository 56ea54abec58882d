"""``curvedit bench serve``: load on a real ``curvedit serve`` process, beside its yardsticks, in one run.

For each model (the shipped one, and a synthetic d=512/h=512/8-layer bundle made on the fly) it starts, as
separate processes: the server with batching (``--max-batch-size``; one per ``--max-queue-delay-ms`` given, the
first named ``batched``), the server with batching off (``--max-batch-size 1``), a no-op grpc.aio server
(``curvedit.bench.noop``: gRPC's own ceiling here) and, with ``--baseline-pythonpath``, the batched server of
another curvedit install (``today``: an older commit built into that folder, so "not lower than today" is
measured in the same run). All servers of a model run at once, and every cell is measured in ``--rounds``
rounds that take the servers in turn, so load from other processes falls on all of them alike (this machine is
shared).
This process is the load generator (asyncio, grpc.aio), so client and server do not share an interpreter:
single-item ``Edit`` calls at each concurrency, and one ``EditStream`` sending chunks as ``curvedit batch``
does. Each cell reports requests/s (the median round's; "spread": the rounds' range as a % of it), items/s,
client p50/p95/p99 over all rounds and the server's mean executed batch (scraped from its ``/metrics``); then
the in-process engine runs at the same batch size for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from curvedit.bench.load import ServerProcess, engine_items_per_s, percentiles, stream_load, unary_load
from curvedit.models.files import write_csv


@dataclass
class Cell:
    model: str
    server: str  # batched | off | noop
    mode: str  # unary | stream
    concurrency: int  # requests in flight (unary) or chunks in flight (stream)
    items_per_request: int
    requests_per_s: float
    items_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    mean_batch: float = float("nan")  # server-side items / executed batches during the cell
    batch_compute_ms: float = float("nan")  # server-side mean compute time of one batch
    engine_items_per_s: float = float("nan")  # in-process engine at the same batch size
    round_requests_per_s: tuple[float, ...] = ()  # each round's, in order


def _serve_argv(bundle: Path, max_batch: int, delay_ms: float, engine: str, http: bool = True) -> list[str]:
    return [sys.executable, "-m", "curvedit.cli", "serve", "--model", str(bundle), "--port", "0",
            *(["--http-port", "-1"] if http else []),
            "--metrics-port", "0", "--max-batch-size", str(max_batch), "--max-queue-delay-ms", str(delay_ms),
            "--engine", engine]


def _has_http_port(pythonpath: str) -> bool:
    """Whether the curvedit installed in ``pythonpath`` knows ``serve --http-port`` (HTTP since #10)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))}
    help_text = subprocess.run([sys.executable, "-m", "curvedit.cli", "serve", "--help"], capture_output=True,
                               text=True, env=env, cwd=pythonpath, timeout=120).stdout
    return "--http-port" in help_text


def _servers(bundle: Path, args) -> dict[str, tuple[list[str], str | None]]:
    """``{name: (argv, PYTHONPATH to put first)}`` of every server a model is measured on, in order."""
    delays = args.max_queue_delay_ms
    servers = {("batched" if i == 0 else f"batched-{d:g}ms"): (_serve_argv(bundle, args.max_batch_size, d,
                                                                           args.engine), None)
               for i, d in enumerate(delays)}
    if args.baseline_pythonpath:  # an older curvedit: HTTP off if it has --http-port, else it has no HTTP
        servers["today"] = (_serve_argv(bundle, args.max_batch_size, args.baseline_delay_ms, args.engine,
                                        http=_has_http_port(args.baseline_pythonpath)), args.baseline_pythonpath)
    servers["off"] = (_serve_argv(bundle, 1, 0, args.engine), None)
    servers["noop"] = ([sys.executable, "-m", "curvedit.bench.noop", "--port", "0"], None)
    return servers


def run_model(label: str, bundle: Path, args) -> list[Cell]:
    from curvedit.service.models import serving_model

    model = serving_model(bundle, args.engine)  # the same engine settings the server uses
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((max(4096, args.chunk * 8), model.latent_dim)).astype(np.float32)
    edits = {model.directions[0]: 1.0}
    servers = {}
    try:
        for name, (argv, pythonpath) in _servers(bundle, args).items():  # all up at once: cells interleave
            servers[name] = ServerProcess(argv, pythonpath)
        cells = []
        plan = [("unary", c, 1) for c in args.concurrency] + [("stream", args.in_flight, args.chunk)]
        for mode, conc, items in plan:
            samples: dict[str, list] = {name: [] for name in servers}
            for _ in range(args.rounds):  # round by round over the servers: load from elsewhere hits all alike
                for name, server in servers.items():
                    samples[name].append(_sample(server, mode, conc, items, latents, edits, args.duration))
            for name in servers:
                cell = _cell(label, name, mode, conc, items, samples[name], args.duration)
                cells.append(cell)
                print(_row(cell), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    for cell in cells:  # the engine at the batch size the server actually executed (or the chunk for noop)
        batch = cell.mean_batch if cell.mean_batch == cell.mean_batch else cell.items_per_request
        cell.engine_items_per_s = engine_items_per_s(model, latents, edits, max(1, round(batch)),
                                                     seconds=args.engine_seconds)
    return cells


def _sample(server: ServerProcess, mode: str, conc: int, items: int, latents, edits, duration: float) -> tuple:
    """One measurement of one server: (requests, latencies, errors, metric deltas)."""
    target = f"127.0.0.1:{server.port}"
    before = server.metrics()
    if mode == "unary":
        n, lat, errors, _ = asyncio.run(unary_load(target, latents, edits, conc, duration))
    else:
        n, lat, errors = asyncio.run(stream_load(target, latents, edits, items, conc, duration))
    after = server.metrics()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in (
        "nv_inference_exec_count", "nv_inference_count", "nv_inference_compute_infer_duration_us")}
    return n, lat, errors, delta


def _cell(label: str, name: str, mode: str, conc: int, items: int, samples: list, duration: float) -> Cell:
    """A cell from its rounds: the median round's requests/s, percentiles over every round's latencies."""
    rates = tuple(n / duration for n, _, _, _ in samples)
    rate = sorted(rates)[len(rates) // 2]
    p50, p95, p99 = percentiles([x for _, lat, _, _ in samples for x in lat])
    cell = Cell(label, name, mode, conc, items, rate, rate * items, p50, p95, p99, sum(s[2] for s in samples),
                round_requests_per_s=rates)
    batches = sum(s[3]["nv_inference_exec_count"] for s in samples)
    if batches > 0:
        cell.mean_batch = sum(s[3]["nv_inference_count"] for s in samples) / batches
        compute_us = sum(s[3]["nv_inference_compute_infer_duration_us"] for s in samples)
        cell.batch_compute_ms = compute_us / batches / 1e3
    return cell


HEADER = (f"{'model':<22} {'server':<11} {'mode':<6} {'conc':>5} {'items':>5} {'req/s':>9} {'items/s':>10} "
          f"{'spread':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'err':>4} {'batch':>6} {'cmp ms':>7} "
          f"{'engine it/s':>12}")


def _row(c: Cell) -> str:
    return (f"{c.model:<22} {c.server:<11} {c.mode:<6} {c.concurrency:>5} {c.items_per_request:>5} "
            f"{c.requests_per_s:>9.0f} {c.items_per_s:>10.0f} {_spread(c):>6.0f}% "
            f"{c.p50_ms:>8.2f} {c.p95_ms:>8.2f} {c.p99_ms:>8.2f} {c.errors:>4} "
            f"{c.mean_batch:>6.1f} {c.batch_compute_ms:>7.2f} {c.engine_items_per_s:>12.0f}")


def _spread(c: Cell) -> float:
    """The rounds' requests/s range as a percentage of the median (0 with one round)."""
    rates = c.round_requests_per_s
    return 100 * (max(rates) - min(rates)) / c.requests_per_s if rates and c.requests_per_s else float("nan")


def summarize(cells: list[Cell]) -> list[dict]:
    """The issue's goals, as measured ratios: a lone client pays no batching tax, c=64 throughput not lower
    than today's server (with ``--baseline-pythonpath``), c=64 p99 within 2x the no-op server's, streams close to
    the in-process engine; and, for scale, c=64 against the no-op server."""
    def find(model, server, mode, conc=None):
        for c in cells:
            if (c.model, c.server, c.mode) == (model, server, mode) and (conc is None or c.concurrency == conc):
                return c
        return None

    checks = []

    def check(model, target, value, goal, lower_is_better=False):
        checks.append({"model": model, "target": target, "value": value, "goal": goal,
                       "lower_is_better": lower_is_better})

    for model in dict.fromkeys(c.model for c in cells):
        b1, off1 = find(model, "batched", "unary", 1), find(model, "off", "unary", 1)
        if b1 and off1:
            check(model, "c=1 batched p50 / batching-off p50 <= 1.15", b1.p50_ms / off1.p50_ms, 1.15, True)
        b64, today64, noop64 = (find(model, s, "unary", 64) for s in ("batched", "today", "noop"))
        if b64 and today64:
            check(model, "c=64 req/s / today's server >= 1", b64.requests_per_s / today64.requests_per_s, 1.0)
        if b64 and noop64:
            check(model, "c=64 p99 / no-op server's p99 <= 2", b64.p99_ms / noop64.p99_ms, 2.0, True)
            check(model, "c=64 req/s / no-op server's (for scale)", b64.requests_per_s / noop64.requests_per_s,
                  0.0)
        stream = find(model, "batched", "stream")
        if stream:
            check(model, "stream items/s / in-process engine (same chunk) >= 0.8",
                  stream.items_per_s / _engine_at_chunk(cells, model), 0.8)
    for c in checks:
        c["met"] = bool(c["value"] <= c["goal"] if c["lower_is_better"] else c["value"] >= c["goal"])
    return checks


def _engine_at_chunk(cells: list[Cell], model: str) -> float:
    noop = [c for c in cells if c.model == model and c.server == "noop" and c.mode == "stream"]
    return noop[0].engine_items_per_s if noop else float("nan")


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curvedit bench serve", description=__doc__)
    add_options(parser)
    return run(parser.parse_args(argv))


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="shipped,synthetic",
                   help="comma list of shipped, synthetic, or paths (default shipped,synthetic)")
    p.add_argument("--concurrency", default="1,8,64,256", type=lambda s: [int(x) for x in s.split(",")],
                   help="comma list of client concurrencies (default 1,8,64,256)")
    p.add_argument("--duration", type=float, default=3.0,
                   help="seconds measured per cell and round, after 0.5 s warm-up (default 3)")
    p.add_argument("--rounds", type=_at_least_one, default=3,
                   help="rounds per cell, the servers taken in turn within each (default 3); a cell reports the "
                        "median round's requests/s and percentiles over all rounds")
    p.add_argument("--max-batch-size", type=int, default=256, help="the batched server's (default 256)")
    p.add_argument("--max-queue-delay-ms", default=[5.0], type=lambda s: [float(x) for x in s.split(",")],
                   help="the batched server's; a comma list runs one batched server per value, the first named "
                        "`batched` (default 5)")
    p.add_argument("--baseline-pythonpath", default=None, metavar="DIR",
                   help="also measure the batched server of the curvedit installed in DIR (pip install --target "
                        "DIR of an older commit) as `today` (default: none)")
    p.add_argument("--baseline-delay-ms", type=float, default=5.0,
                   help="max queue delay of the `today` server (default 5, its own default)")
    p.add_argument("--chunk", type=int, default=256, help="items per stream message (default 256)")
    p.add_argument("--in-flight", type=int, default=4, help="stream messages in flight (default 4)")
    p.add_argument("--engine", default="auto", help="the servers' engine (default auto)")
    p.add_argument("--engine-seconds", type=float, default=1.0,
                   help="seconds the in-process engine is timed per batch size (default 1)")
    p.add_argument("--json", action="store_true",
                   help="print cells and target checks as JSON at the end (default: a table)")
    p.add_argument("--csv", default=None, help="also write the cells to this CSV file (default: none)")
    p.add_argument("--workers", default=None, type=lambda s: [int(x) for x in s.split(",")],
                   help="the scale-out table instead (curvedit/bench/scale.py): serve --workers N beside a no-op "
                        "server of N processes, for each N of this comma list, e.g. 1,2,4 (default: none)")
    p.add_argument("--client-processes", type=int, default=2,
                   help="with --workers: load generator processes (default 2)")
    p.add_argument("--big-items", type=int, default=1024,
                   help="with --workers: latents per request of the large-request cell (default 1024)")
    p.add_argument("--big-concurrency", type=int, default=8,
                   help="with --workers: requests in flight in the large-request cell (default 8)")
    p.add_argument("--scale-model", default=None, metavar="PATH",
                   help="with --workers: the bundle served (default: the shipped default model)")
    p.add_argument("--json-file", default=None, metavar="FILE",
                   help="with --workers: write the cells and ratios as JSON to FILE (default: none)")


def run(args) -> int:
    import curvedit
    from curvedit.synthetic import make_synthetic_bundle

    if args.workers:
        from curvedit.bench.scale import run_scale

        return run_scale(args)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        print(HEADER, flush=True)
        for label in args.models.split(","):
            if label == "shipped":
                bundle = curvedit.default_bundle_path()
                if not (bundle / "manifest.json").exists():
                    print(f"(skipping shipped: no bundle at {bundle})", flush=True)
                    continue
            elif label == "synthetic":
                bundle = make_synthetic_bundle(Path(tmp) / "synthetic", latent_dim=512, hidden=512, layers=8)
            else:
                bundle = Path(label)
            cells += run_model(label if label in ("shipped", "synthetic") else bundle.name, bundle, args)
    print("\nfinal table (engine it/s measured after the load, in this process):")
    print(HEADER)
    for cell in cells:
        print(_row(cell))
    checks = summarize(cells)
    print()
    for c in checks:
        verdict = "-" if c["goal"] == 0.0 else "met" if c["met"] else "MISSED"
        print(f"{c['model']:<12} {c['target']:<62} {c['value']:8.2f}  {verdict}")
    if args.csv:
        write_csv(args.csv, [asdict(c) for c in cells])
    if args.json:
        print(json.dumps({"cells": [asdict(c) for c in cells], "checks": checks}, indent=2))
    return 0


def register(sub) -> None:
    serve = sub.add_parser("serve", help="load benchmark of curvedit serve vs batching off, no-op gRPC, engine")
    add_options(serve)
    serve.set_defaults(func=run)
